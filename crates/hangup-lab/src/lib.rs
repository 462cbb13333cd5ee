//! The hangup fault lab (work in progress).
#![warn(missing_docs)]
