//! Sample payloads shared by the unit tests.

use serde_json::{json, Value};

/// A successful login, exactly as login_notification sends it.
pub fn login_payload() -> Value {
    json!({
        "schemaVersion": 1, "event": "login", "status": "success",
        "userName": "alice", "databaseName": "orders",
        "remoteHost": "10.0.0.5", "remotePort": 51234, "applicationName": "psql",
        "authMethod": "scram-sha-256", "ssl": true, "sslVersion": "TLSv1.3",
        "sslCipher": "TLS_AES_256_GCM_SHA384", "backendPid": 12345,
        "timestamp": "2026-12-03 15:38:41", "time": "2026-12-03T15:38:41.123456Z",
        "server": {"host": "db1", "port": 5432, "clusterName": "main",
                   "systemIdentifier": "7312345678901234567", "version": "15.20",
                   "inRecovery": false}
    })
}

/// A failed login of bob, otherwise like `login_payload`.
pub fn failure_payload() -> Value {
    let mut payload = login_payload();
    payload["status"] = json!("failure");
    payload["userName"] = json!("bob");
    payload
}

/// A rate-limit summary as a future version of the extension will send it.
pub fn suppressed_payload() -> Value {
    json!({
        "schemaVersion": 1, "event": "suppressed", "eventId": "e-42",
        "time": "2026-12-03T15:40:00.000000Z", "timestamp": "2026-12-03 15:40:00",
        "periodStart": "2026-12-03T15:39:00Z", "periodEnd": "2026-12-03T15:40:00Z",
        "suppressed": 240, "byUser": {"alice": 120, "bob": 100, "carol": 20},
        "byRemoteHost": {"10.0.0.5": 200, "10.0.0.6": 40},
        "server": {"host": "db1", "port": 5432, "clusterName": "main",
                   "systemIdentifier": "7312345678901234567", "version": "15.20",
                   "inRecovery": false}
    })
}
