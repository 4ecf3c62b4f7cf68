//! JSON values across the boundary: plain objects and arrays in and out.

use crate::error::Code;
use serde::Serialize;
use wasm_bindgen::prelude::*;

use super::error::{js_error, JsResult};

/// JSON text of a JavaScript value, by the engine's `JSON.stringify` (fast,
/// and JSON's own rules: `toJSON` applies, so a `Date` is its ISO text).
/// What JSON cannot hold is refused with `INVALID_VALUE` wherever it sits,
/// never dropped or turned into `null` on the way: `undefined`, a function,
/// a symbol, a `BigInt`, `NaN` and the infinities, a `Map` or a `Set`, a
/// cycle.
pub(crate) fn json_text(value: &JsValue) -> JsResult<String> {
    let text = REPLACER
        .with(|replacer| js_sys::JSON::stringify_with_replacer(value, replacer.as_ref()))
        .map_err(|e| {
            js_error(
                Code::InvalidValue,
                &format!("not a JSON value: {}", describe(&e)),
            )
        })?;
    text.as_string()
        .ok_or_else(|| js_error(Code::InvalidValue, "not a JSON value: it has no JSON form"))
}

thread_local! {
    /// `JSON.stringify`'s replacer: throws on what JSON would drop or
    /// change.
    static REPLACER: Closure<dyn FnMut(JsValue, JsValue) -> Result<JsValue, JsValue>> =
        Closure::new(|key: JsValue, value: JsValue| match refusal(&value) {
            None => Ok(value),
            Some(what) => {
                let at = key.as_string().filter(|k| !k.is_empty());
                Err(js_sys::Error::new(&match at {
                    Some(key) => format!("{what} at key {key:?}"),
                    None => what.to_owned(),
                })
                .into())
            }
        });
}

/// Why `value` has no faithful JSON form, if it has none.
fn refusal(value: &JsValue) -> Option<&'static str> {
    if value.is_undefined() {
        Some("undefined (use null, or leave the key out)")
    } else if value.is_function() {
        Some("a function")
    } else if value.is_symbol() {
        Some("a symbol")
    } else if value.is_bigint() {
        Some("a BigInt (store it as a string)")
    } else if value.as_f64().is_some_and(|n| !n.is_finite()) {
        Some("a number that is not finite")
    } else if value.is_instance_of::<js_sys::Map>() {
        Some("a Map (use a plain object)")
    } else if value.is_instance_of::<js_sys::Set>() {
        Some("a Set (use an array)")
    } else {
        None
    }
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
