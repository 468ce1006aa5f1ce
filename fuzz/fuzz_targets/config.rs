//! Any text as the configuration file: parsing and validation never panic, and a
//! configuration that loads gives everything the server derives from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rendez::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text) else {
        return;
    };
    config
        .validate()
        .expect("a loaded configuration stays valid");
    let _ = config.static_users();
    let _ = config.restart_only_changes(&Config::default());
    let _ = rendez::credential::ice_urls(&config, "turn.example.com");
});
