//! Declares the browser cfg once, so that every gate in the crate reads the
//! same; with the `node` feature, napi-rs's link settings for the addon.
fn main() {
    #[cfg(feature = "node")]
    napi_build::setup();
    println!("cargo::rustc-check-cfg=cfg(wasm_browser)");
    let family = std::env::var("CARGO_CFG_TARGET_FAMILY").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if family.split(',').any(|f| f == "wasm") && os == "unknown" {
        println!("cargo::rustc-cfg=wasm_browser");
    }
}
