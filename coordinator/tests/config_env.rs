//! `TSWEEP__*` environment variables of the real process environment override the config
//! file and are overridden by flags; an unknown `TSWEEP__` key is refused by name. One
//! test in its own binary: it changes the process environment.

use tsweep_coordinator::config::{ConfigOverrides, ServiceConfig};

#[test]
fn process_environment_layers_between_file_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coordinator.toml");
    std::fs::write(&file, "lease_ttl_ms = 9000\nredis_url = \"redis://10.0.0.1:6379\"\n").unwrap();
    std::env::set_var("TSWEEP__LEASE_TTL_MS", "12000");
    std::env::set_var("TSWEEP__REDIS_URL", "redis://10.0.0.2:6379");
    let config = ServiceConfig::load(
        Some(&file),
        ConfigOverrides { redis_url: Some("redis://127.0.0.1:7000".into()), ..Default::default() },
    )
    .unwrap();
    assert_eq!(config.lease_ttl_ms, 12_000, "env beats the file");
    assert_eq!(config.redis_url, "redis://127.0.0.1:7000", "flags beat env");

    std::env::set_var("TSWEEP__LEASE_TLL_MS", "1");
    let error = ServiceConfig::load(Some(&file), ConfigOverrides::default()).unwrap_err().to_string();
    assert!(error.contains("lease_tll_ms"), "{error}");
    for key in ["TSWEEP__LEASE_TTL_MS", "TSWEEP__REDIS_URL", "TSWEEP__LEASE_TLL_MS"] {
        std::env::remove_var(key);
    }
}
