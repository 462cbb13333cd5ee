//! `hangup presence --cluster URL`: the fleet's sessions, read from Redis.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hangup_core::Cause;
use serde::Serialize;

use super::{ClusterError, KEY_PREFIX};
use crate::presence::{optional_rfc3339_millis, rfc3339_millis, PresenceFilter};

/// One session in the cluster history, newest first from [`query`].
///
/// In JSON, times are RFC 3339 strings in UTC with milliseconds; `ended_at` and
/// `cause` are `null` while the session is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterSessionRow {
    /// The device id from `HELLO`.
    pub device: String,
    /// The session id (16 lowercase hex digits), unique on its node.
    pub session: String,
    /// The node that held it.
    pub node: String,
    /// The peer's address.
    pub peer: String,
    /// True while it is the device's owner in Redis and its node's lease is alive.
    pub online: bool,
    /// When the session started.
    #[serde(serialize_with = "rfc3339_millis")]
    pub connected_at: SystemTime,
    /// When it ended; `None` while open.
    #[serde(serialize_with = "optional_rfc3339_millis")]
    pub ended_at: Option<SystemTime>,
    /// Why it ended; `None` while open.
    pub cause: Option<Cause>,
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Devices scanned at most when no device is named (SCAN over the history keys).
const MAX_DEVICES: usize = 100_000;

/// Reads the cluster's sessions from the Redis at `url`.
pub async fn query(
    url: &str,
    filter: &PresenceFilter,
) -> Result<Vec<ClusterSessionRow>, ClusterError> {
    let client = redis::Client::open(url).map_err(|source| ClusterError::BadUrl {
        url: url.to_owned(),
        source,
    })?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let devices: Vec<String> = match (&filter.device, filter.online_only) {
        (Some(device), _) => vec![device.clone()],
        (None, true) => {
            redis::cmd("SMEMBERS")
                .arg(format!("{KEY_PREFIX}online"))
                .query_async(&mut conn)
                .await?
        }
        (None, false) => {
            let pattern = format!("{KEY_PREFIX}hist:*");
            let mut cursor = 0u64;
            let mut devices = Vec::new();
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await?;
                devices.extend(
                    keys.iter()
                        .filter_map(|k| k.strip_prefix(&pattern[..pattern.len() - 1]))
                        .map(str::to_owned),
                );
                cursor = next;
                if cursor == 0 || devices.len() >= MAX_DEVICES {
                    break;
                }
            }
            devices
        }
    };
    let live_nodes: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{KEY_PREFIX}nodes"))
        .query_async(&mut conn)
        .await?;
    let mut alive = HashMap::new();
    for node in live_nodes {
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("{KEY_PREFIX}lease:{node}"))
            .query_async(&mut conn)
            .await?;
        alive.insert(node, exists);
    }
    let mut rows = Vec::new();
    for device in devices {
        let (owner, ids): ((Option<String>, Option<String>), Vec<String>) = redis::pipe()
            .cmd("HMGET")
            .arg(format!("{KEY_PREFIX}dev:{device}"))
            .arg("node")
            .arg("session")
            .cmd("LRANGE")
            .arg(format!("{KEY_PREFIX}hist:{device}"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let owner_id = match owner {
            (Some(node), Some(session)) => Some(format!("{node}/{session}")),
            _ => None,
        };
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(format!("{KEY_PREFIX}sess:{id}"));
        }
        let records: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        for (id, record) in ids.iter().zip(records) {
            let Some(connected_ms) = record.get("connected_ms").and_then(|v| v.parse().ok()) else {
                // Expired since the list was read.
                continue;
            };
            let node = record.get("node").cloned().unwrap_or_default();
            let ended_at = record
                .get("ended_ms")
                .and_then(|v| v.parse().ok())
                .map(from_ms);
            let cause = record.get("cause").and_then(|c| c.parse().ok());
            let online = ended_at.is_none()
                && owner_id.as_deref() == Some(id.as_str())
                && alive.get(&node).copied().unwrap_or(false);
            if filter.online_only && !online {
                continue;
            }
            rows.push(ClusterSessionRow {
                device: record.get("device").cloned().unwrap_or(device.clone()),
                session: record.get("session").cloned().unwrap_or_default(),
                node,
                peer: record.get("peer").cloned().unwrap_or_default(),
                online,
                connected_at: from_ms(connected_ms),
                ended_at,
                cause,
            });
        }
    }
    rows.sort_by(|a, b| {
        b.connected_at
            .cmp(&a.connected_at)
            .then_with(|| a.device.cmp(&b.device))
    });
    if let Some(limit) = filter.limit {
        rows.truncate(limit);
    }
    Ok(rows)
}
