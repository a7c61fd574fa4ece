//! Compiles src/port_info.c against the headers of the PostgreSQL that pgrx builds for: the
//! pg_config in PGRX_PG_CONFIG_PATH, else the one `cargo pgrx init` registered for the
//! enabled pgNN feature (as pgrx-pg-sys does).

use pgrx_pg_config::{PgConfig, Pgrx};

fn main() {
    println!("cargo:rerun-if-changed=src/port_info.c");
    println!("cargo:rerun-if-env-changed=PGRX_PG_CONFIG_PATH");
    let pg_config = match std::env::var_os("PGRX_PG_CONFIG_PATH") {
        Some(path) => PgConfig::new_with_defaults(path.into()),
        None => {
            let major = (13..=18)
                .find(|v| std::env::var_os(format!("CARGO_FEATURE_PG{v}")).is_some())
                .expect("enable one of the pg13..pg18 features");
            Pgrx::from_config()
                .and_then(|pgrx| pgrx.get(&format!("pg{major}")))
                .expect("no pg_config for this PostgreSQL version: run cargo pgrx init")
        }
    };
    let include = pg_config
        .includedir_server()
        .expect("pg_config --includedir-server failed");
    // The login path's functions (Rust and C) are all in `.text.hot.login_notification`;
    // without this, LLD would merge that section into .text in input order, scattering them
    // again. Kept together, a new backend faults in one or two pages of code per login
    // instead of one per function (see src/hook.rs and BENCHMARKS.md).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,keep-text-section-prefix");
    cc::Build::new()
        .file("src/port_info.c")
        .include(&include)
        .warnings(false)
        .compile("login_notification_port_info");
}
