//! The `Kv` class: keys holding JSON values.

use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use super::value::{json_text, parse_json};
use crate::store::Kv;

/// The key-value space of a store.
#[wasm_bindgen(js_name = Kv)]
pub struct JsKv {
    kv: Kv,
}

impl JsKv {
    pub(super) fn new(kv: Kv) -> JsKv {
        JsKv { kv }
    }
}

#[wasm_bindgen(js_class = Kv)]
impl JsKv {
    /// Sets `key` to a JSON value.
    pub fn set(&self, key: String, value: JsValue) -> js_sys::Promise {
        let kv = self.kv.clone();
        let text = json_text(&value);
        future_to_promise(async move {
            kv.set_json(&key, text?).await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The value of `key`, or `undefined`.
    pub fn get(&self, key: String) -> js_sys::Promise {
        let kv = self.kv.clone();
        future_to_promise(async move {
            match kv.get_json(&key).await? {
                Some(text) => parse_json(&text),
                None => Ok(JsValue::UNDEFINED),
            }
        })
    }

    /// Deletes `key`.
    pub fn delete(&self, key: String) -> js_sys::Promise {
        let kv = self.kv.clone();
        future_to_promise(async move {
            kv.delete(&key).await?;
            Ok(JsValue::UNDEFINED)
        })
    }
}
