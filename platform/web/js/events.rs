//! The `Events` class: an append-only log.

use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use super::error::JsResult;
use super::value::{json_text, json_view, to_js};
use crate::store::{EventListOptions, Events};

/// An append-only event log.
#[wasm_bindgen(js_name = Events)]
pub struct JsEvents {
    events: Events,
}

impl JsEvents {
    pub(super) fn new(events: Events) -> JsEvents {
        JsEvents { events }
    }
}

#[wasm_bindgen(js_class = Events)]
impl JsEvents {
    /// Appends a value; resolves to `{ id, at }`.
    pub fn append(&self, value: JsValue) -> js_sys::Promise {
        let events = self.events.clone();
        let text = json_text(&value);
        future_to_promise(async move {
            let event = events.append_json(text?).await?;
            to_js(&serde_json::json!({ "id": event.id, "at": event.at }))
        })
    }

    /// `[{ id, at, value }]` in log order; options `{ since?, limit? }` where
    /// `since` is an event id (exclusive) or milliseconds.
    pub fn list(&self, options: JsValue) -> js_sys::Promise {
        let events = self.events.clone();
        let options = list_options(&options);
        future_to_promise(async move {
            let list = events.list(options?).await?;
            let rows: Vec<serde_json::Value> = list
                .into_iter()
                .map(|e| serde_json::json!({ "id": e.id, "at": e.at, "value": e.value }))
                .collect();
            to_js(&rows)
        })
    }
}

fn list_options(options: &JsValue) -> JsResult<EventListOptions> {
    Ok(crate::js_api::event_list_options(&json_view(options)?)?)
}
