//! Platform code: where sockets come from.
//!
//! Only Linux has sock_diag; elsewhere [`collect`] returns
//! [`InspectError::Unsupported`](crate::InspectError::Unsupported).

#[cfg(target_os = "linux")]
pub(crate) mod linux;

#[cfg(target_os = "linux")]
pub(crate) use linux::{collect, collect_sockets};

#[cfg(not(target_os = "linux"))]
pub(crate) fn collect() -> Result<crate::model::Snapshot, crate::error::InspectError> {
    Err(crate::error::InspectError::Unsupported)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn collect_sockets() -> Result<crate::model::Snapshot, crate::error::InspectError> {
    Err(crate::error::InspectError::Unsupported)
}
