//! Errors at the JavaScript boundary: an `Error` whose `code` property is the
//! Rust error's stable code.

use wasm_bindgen::JsValue;

use crate::error::Code;

/// A JavaScript `Error` with `code` set.
pub(crate) fn js_error(code: Code, message: &str) -> JsValue {
    coded(code.as_str(), message)
}

fn coded(code: &str, message: &str) -> JsValue {
    let error = js_sys::Error::new(message);
    let _ = js_sys::Reflect::set(&error, &JsValue::from_str("code"), &JsValue::from_str(code));
    error.into()
}

impl From<crate::Error> for JsValue {
    fn from(e: crate::Error) -> JsValue {
        coded(e.code(), &e.to_string())
    }
}

/// `Result` of the JavaScript API.
pub(crate) type JsResult<T> = Result<T, JsValue>;
