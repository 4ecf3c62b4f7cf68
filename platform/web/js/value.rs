//! JSON values across the boundary: plain objects and arrays in and out.

use serde::Serialize;
use wasm_bindgen::JsValue;

use super::error::{js_error, JsResult};

/// JSON text of a JavaScript value, by the engine's `JSON.stringify` (fast,
/// and JSON's own rules: nested functions and `undefined` are left out).
/// Values with no JSON form (`undefined`, a function, a symbol, a `BigInt`,
/// a cycle) are refused with `INVALID_VALUE`.
pub(crate) fn json_text(value: &JsValue) -> JsResult<String> {
    let text = js_sys::JSON::stringify(value).map_err(|e| {
        js_error(
            "INVALID_VALUE",
            &format!("not a JSON value: {}", describe(&e)),
        )
    })?;
    text.as_string()
        .ok_or_else(|| js_error("INVALID_VALUE", "this value has no JSON form"))
}

/// A stored JSON text as a JavaScript value, by the engine's `JSON.parse`.
pub(crate) fn parse_json(text: &str) -> JsResult<JsValue> {
    js_sys::JSON::parse(text).map_err(|_| js_error("STORAGE_CORRUPT", "stored JSON does not parse"))
}

fn describe(error: &JsValue) -> String {
    js_sys::Reflect::get(error, &JsValue::from_str("message"))
        .ok()
        .and_then(|m| m.as_string())
        .unwrap_or_else(|| "unknown".into())
}

/// A Rust value as a plain JavaScript value (objects, not `Map`s).
pub(crate) fn to_js(value: &impl Serialize) -> JsResult<JsValue> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| {
            js_error(
                "INVALID_VALUE",
                &format!("cannot convert to JavaScript: {e}"),
            )
        })
}

/// Reads an optional property of an options object.
pub(crate) fn option(options: &JsValue, key: &str) -> JsValue {
    if options.is_object() {
        js_sys::Reflect::get(options, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
    } else {
        JsValue::UNDEFINED
    }
}

/// An optional string property.
pub(crate) fn option_string(options: &JsValue, key: &str) -> JsResult<Option<String>> {
    let value = option(options, key);
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    value
        .as_string()
        .map(Some)
        .ok_or_else(|| js_error("INVALID_OPTIONS", &format!("option {key} must be a string")))
}

/// An optional non-negative integer property.
pub(crate) fn option_count(options: &JsValue, key: &str) -> JsResult<Option<u64>> {
    let value = option(options, key);
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    match value.as_f64() {
        Some(n) if n >= 0.0 && n.fract() == 0.0 && n < 9_007_199_254_740_992.0 => {
            Ok(Some(n as u64))
        }
        _ => Err(js_error(
            "INVALID_OPTIONS",
            &format!("option {key} must be a non-negative integer"),
        )),
    }
}
