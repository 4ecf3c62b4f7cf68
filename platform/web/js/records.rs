//! The `Records` class: one collection.

use crate::error::Code;
use futures::StreamExt;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use super::error::JsResult;
use super::value::{json_text, json_view, parse_json, to_js};
use crate::store::{ListOptions, Records};

/// The records of one collection.
#[wasm_bindgen(js_name = Records)]
pub struct JsRecords {
    records: Records,
}

impl JsRecords {
    pub(super) fn new(records: Records) -> JsRecords {
        JsRecords { records }
    }
}

#[wasm_bindgen(js_class = Records)]
impl JsRecords {
    /// Stores a plain object (any JSON value) under `id`.
    pub fn put(&self, id: String, value: JsValue) -> js_sys::Promise {
        let records = self.records.clone();
        let text = json_text(&value);
        future_to_promise(async move {
            records.put_json(&id, text?).await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Stores many records in one commit and one IndexedDB transaction:
    /// `putMany([[id, value], ...])`.
    #[wasm_bindgen(js_name = putMany)]
    pub fn put_many(&self, entries: JsValue) -> js_sys::Promise {
        let records = self.records.clone();
        let entries = many(&entries);
        future_to_promise(async move {
            records.put_many_json(entries?).await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The value stored under `id`, or `undefined`.
    pub fn get(&self, id: String) -> js_sys::Promise {
        let records = self.records.clone();
        future_to_promise(async move {
            match records.get_json(&id).await? {
                Some(text) => parse_json(&text),
                None => Ok(JsValue::UNDEFINED),
            }
        })
    }

    /// Deletes `id`.
    pub fn delete(&self, id: String) -> js_sys::Promise {
        let records = self.records.clone();
        future_to_promise(async move {
            records.delete(&id).await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// `[{ id, value }]` in id order; options `{ prefix?, limit?, after? }`.
    pub fn list(&self, options: JsValue) -> js_sys::Promise {
        let records = self.records.clone();
        let options = list_options(&options);
        future_to_promise(async move {
            let rows = js_sys::Array::new();
            for (id, text) in records.list_json(options?).await? {
                let row = js_sys::Object::new();
                let _ = js_sys::Reflect::set(&row, &"id".into(), &JsValue::from_str(&id));
                let _ = js_sys::Reflect::set(&row, &"value".into(), &parse_json(&text)?);
                rows.push(&row);
            }
            Ok(rows.into())
        })
    }

    /// Calls `callback(changes)` after each commit that changed this
    /// collection (`changes`: `[{ id, value, origin }]`, `value` undefined
    /// for a deletion). Returns a function that unsubscribes.
    pub fn subscribe(&self, callback: js_sys::Function) -> JsResult<js_sys::Function> {
        let mut stream = self.records.changes()?;
        let (abort, registration) = futures::future::AbortHandle::new_pair();
        let deliver = async move {
            while let Some(item) = stream.next().await {
                let Ok(changes) = item else { continue };
                let batch = crate::js_api::changes(&changes);
                if let Ok(batch) = to_js(&batch) {
                    // A throwing callback must not stop later deliveries.
                    let _ = callback.call1(&JsValue::NULL, &batch);
                }
            }
        };
        wasm_bindgen_futures::spawn_local(async move {
            let _ = futures::future::Abortable::new(deliver, registration).await;
        });
        let off = Closure::once_into_js(move || abort.abort());
        Ok(off.unchecked_into())
    }
}

fn many(entries: &JsValue) -> JsResult<Vec<(String, String)>> {
    let bad = || {
        super::error::js_error(
            Code::InvalidValue,
            "putMany takes an array of [id, value] pairs",
        )
    };
    let array = entries.dyn_ref::<js_sys::Array>().ok_or_else(bad)?;
    array
        .iter()
        .map(|pair| {
            let pair = pair.dyn_into::<js_sys::Array>().map_err(|_| bad())?;
            let id = pair.get(0).as_string().ok_or_else(bad)?;
            Ok((id, json_text(&pair.get(1))?))
        })
        .collect()
}

fn list_options(options: &JsValue) -> JsResult<ListOptions> {
    Ok(crate::js_api::list_options(&json_view(options)?)?)
}
