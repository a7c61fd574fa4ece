//! Facts about this server that every payload carries. Read on a PostgreSQL main thread
//! (the worker's, or a backend's for `send_test`).

use crate::event::ServerInfo;
use pgrx::pg_sys;
use std::ffi::CStr;

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn c_string(p: *const std::ffi::c_char) -> Option<String> {
    // SAFETY: callers pass NULL or a NUL-terminated string owned by PostgreSQL.
    (!p.is_null())
        .then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

pub fn info() -> ServerInfo {
    // SAFETY: plain reads of PostgreSQL globals and functions valid in any process attached
    // to shared memory (backends and our worker), on its main thread.
    unsafe {
        let version = c_string(pg_sys::GetConfigOption(
            c"server_version".as_ptr(),
            false,
            false,
        ))
        .unwrap_or_default();
        ServerInfo {
            host: hostname(),
            port: pg_sys::PostPortNumber,
            cluster_name: c_string(pg_sys::cluster_name),
            system_identifier: pg_sys::GetSystemIdentifier(),
            version: version.split(' ').next().unwrap_or_default().to_string(),
            in_recovery: pg_sys::RecoveryInProgress(),
        }
    }
}
