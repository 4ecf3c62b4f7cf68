//! JSON values across the boundary: plain objects and arrays in and out.

use crate::error::Code;
use serde::Serialize;
use wasm_bindgen::prelude::*;

use super::error::{js_error, JsResult};

thread_local! {
    /// `JSON.stringify`'s replacer, installed by the package's module
    /// (`js/json-check.js`, the same function the Node.js build uses).
    static JSON_CHECK: std::cell::RefCell<Option<js_sys::Function>> = const { std::cell::RefCell::new(None) };
}

/// Installs the replacer that decides what is a JSON value (the package's
/// module calls it once, as it loads).
#[wasm_bindgen(js_name = useJsonCheck)]
pub fn use_json_check(check: js_sys::Function) {
    JSON_CHECK.with(|slot| *slot.borrow_mut() = Some(check));
}

/// JSON text of a JavaScript value, by the engine's `JSON.stringify` with
/// the package's replacer: what JSON cannot hold is refused with
/// `INVALID_VALUE` wherever it sits (a cycle too), never dropped or turned
/// into `null` on the way.
pub(crate) fn json_text(value: &JsValue) -> JsResult<String> {
    let check = JSON_CHECK.with(|slot| slot.borrow().clone()).ok_or_else(|| {
        js_error(
            Code::InvalidOptions,
            "load the package through its module (import \"@cuitty/persist\"), which installs its JSON check",
        )
    })?;
    let text = js_sys::JSON::stringify_with_replacer(value, &check).map_err(|e| {
        let message = describe(&e);
        if message.starts_with("not a JSON value") {
            js_error(Code::InvalidValue, &message)
        } else {
            js_error(Code::InvalidValue, &format!("not a JSON value: {message}"))
        }
    })?;
    text.as_string()
        .ok_or_else(|| js_error(Code::InvalidValue, "not a JSON value: it has no JSON form"))
}

/// A JSON view of an options object (`Null` for `undefined` or `null`):
/// what the shared option readers of [`crate::js_api`] take. Functions in
/// it (callbacks) are left out; the binding reads those itself.
pub(crate) fn json_view(options: &JsValue) -> JsResult<serde_json::Value> {
    if options.is_undefined() || options.is_null() {
        return Ok(serde_json::Value::Null);
    }
    let text = js_sys::JSON::stringify(options)
        .map_err(|e| {
            js_error(
                Code::InvalidOptions,
                &format!("options are not a plain object: {}", describe(&e)),
            )
        })?
        .as_string()
        .unwrap_or_else(|| "null".into());
    serde_json::from_str(&text).map_err(|e| {
        js_error(
            Code::InvalidOptions,
            &format!("options are not a plain object: {e}"),
        )
    })
}

/// A stored JSON text as a JavaScript value, by the engine's `JSON.parse`.
pub(crate) fn parse_json(text: &str) -> JsResult<JsValue> {
    js_sys::JSON::parse(text)
        .map_err(|_| js_error(Code::StorageCorrupt, "stored JSON does not parse"))
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
                Code::InvalidValue,
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
            Code::InvalidOptions,
            &format!("option {key} must be a non-negative integer"),
        )),
    }
}
