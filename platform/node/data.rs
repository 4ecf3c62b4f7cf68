//! `Records`, `Events` and `Kv`: the data of a store.

use std::sync::Mutex;

use futures::StreamExt;
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{
    ThreadsafeCallContext, ThreadsafeFunctionCallMode, UnknownReturnValue,
};
use napi_derive::napi;

use super::{check, coded, json_text, json_view, parse, promise, settle};
use crate::store::{Events, Kv, Records};

/// A listener called on the JavaScript thread with a JSON text parsed
/// there; it does not keep the process alive.
pub(crate) type JsonListener = napi::threadsafe_function::ThreadsafeFunction<
    String,
    UnknownReturnValue,
    Unknown<'static>,
    Status,
    false,
    true,
>;

/// A listener of `callback` that receives JSON texts as values.
pub(crate) fn json_listener(
    callback: Function<'_, Unknown<'static>, UnknownReturnValue>,
) -> Result<JsonListener> {
    callback
        .build_threadsafe_function::<String>()
        .weak::<true>()
        .build_callback(|ctx: ThreadsafeCallContext<String>| parse(&ctx.env, ctx.value))
}

/// A JSON text, or `undefined` for nothing.
fn maybe<'env>(env: &'env Env, text: Option<String>) -> Result<Either<Unknown<'env>, Undefined>> {
    Ok(match text {
        Some(text) => Either::A(parse(env, text)?),
        None => Either::B(()),
    })
}

/// The records of one collection.
#[napi(js_name = "Records")]
pub struct JsRecords {
    records: Records,
}

impl JsRecords {
    pub(crate) fn new(records: Records) -> JsRecords {
        JsRecords { records }
    }
}

#[napi]
impl JsRecords {
    /// Stores a JSON value under `id`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn put<'env>(
        &self,
        env: &'env Env,
        id: String,
        value: Unknown,
    ) -> Result<PromiseRaw<'env, ()>> {
        settle(env, || {
            let text = json_text(env, value)?;
            let records = self.records.clone();
            promise(
                env,
                async move { records.put_json(&id, text).await },
                |_, _| Ok(()),
            )
        })
    }

    /// Stores many records in one commit: `putMany([[id, value], ...])`.
    #[napi(js_name = "putMany", ts_return_type = "Promise<void>")]
    pub fn put_many<'env>(&self, env: &'env Env, entries: Unknown) -> Result<PromiseRaw<'env, ()>> {
        settle(env, || {
            let bad = || {
                coded(
                    env,
                    crate::Code::InvalidValue.as_str(),
                    "putMany takes an array of [id, value] pairs",
                )
            };
            let text = json_text(env, entries)?;
            let serde_json::Value::Array(pairs) = serde_json::from_str(&text).map_err(|_| bad())?
            else {
                return Err(bad());
            };
            let entries = pairs
                .into_iter()
                .map(|pair| match pair {
                    serde_json::Value::Array(mut pair) if pair.len() == 2 => {
                        let value = pair.pop().ok_or_else(bad)?;
                        let serde_json::Value::String(id) = pair.pop().ok_or_else(bad)? else {
                            return Err(bad());
                        };
                        Ok((id, value.to_string()))
                    }
                    _ => Err(bad()),
                })
                .collect::<Result<Vec<_>>>()?;
            let records = self.records.clone();
            promise(
                env,
                async move { records.put_many_json(entries).await },
                |_, _| Ok(()),
            )
        })
    }

    /// The value stored under `id`, or `undefined`.
    #[napi(ts_return_type = "Promise<unknown>")]
    pub fn get<'env>(
        &self,
        env: &'env Env,
        id: String,
    ) -> Result<PromiseRaw<'env, Either<Unknown<'env>, Undefined>>> {
        settle(env, || {
            let records = self.records.clone();
            promise(env, async move { records.get_json(&id).await }, maybe)
        })
    }

    /// Deletes `id`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn delete<'env>(&self, env: &'env Env, id: String) -> Result<PromiseRaw<'env, ()>> {
        settle(env, || {
            let records = self.records.clone();
            promise(env, async move { records.delete(&id).await }, |_, _| Ok(()))
        })
    }

    /// `[{ id, value }]` in id order; options `{ prefix?, limit?, after? }`.
    #[napi(ts_return_type = "Promise<unknown[]>")]
    pub fn list<'env>(
        &self,
        env: &'env Env,
        options: Option<Unknown>,
    ) -> Result<PromiseRaw<'env, Unknown<'env>>> {
        settle(env, || {
            let options = check(env, crate::js_api::list_options(&json_view(env, options)?))?;
            let records = self.records.clone();
            promise(
                env,
                async move {
                    let rows = records.list_json(options).await?;
                    // One JSON text for the page: one parse on the JS thread.
                    let mut text = String::from("[");
                    for (i, (id, value)) in rows.iter().enumerate() {
                        if i > 0 {
                            text.push(',');
                        }
                        text.push_str("{\"id\":");
                        text.push_str(&serde_json::Value::String(id.clone()).to_string());
                        text.push_str(",\"value\":");
                        text.push_str(value);
                        text.push('}');
                    }
                    text.push(']');
                    Ok(text)
                },
                parse,
            )
        })
    }

    /// Calls `callback(changes)` after each commit that changed this
    /// collection (`changes`: `[{ id, value, origin }]`, `value` absent for
    /// a deletion). Returns a function that unsubscribes.
    #[napi(ts_return_type = "() => void")]
    pub fn subscribe<'env>(
        &self,
        env: &'env Env,
        #[napi(ts_arg_type = "(changes: RecordChange[]) => void")] callback: Function<
            'env,
            Unknown<'static>,
            UnknownReturnValue,
        >,
    ) -> Result<Function<'env, (), ()>> {
        let listener = json_listener(callback)?;
        let mut stream = check(env, self.records.changes())?;
        let task = napi::bindgen_prelude::spawn(async move {
            while let Some(item) = stream.next().await {
                let Ok(changes) = item else { continue };
                let batch = crate::js_api::changes(&changes).to_string();
                if listener.call(batch, ThreadsafeFunctionCallMode::NonBlocking) == Status::Closing
                {
                    break;
                }
            }
        });
        let task = Mutex::new(Some(task));
        env.create_function_from_closure("unsubscribe", move |_| {
            if let Some(task) = task.lock().ok().and_then(|mut t| t.take()) {
                task.abort();
            }
            Ok(())
        })
    }
}

/// An event log.
#[napi(js_name = "Events")]
pub struct JsEvents {
    events: Events,
}

impl JsEvents {
    pub(crate) fn new(events: Events) -> JsEvents {
        JsEvents { events }
    }
}

#[napi]
impl JsEvents {
    /// Appends a value; resolves to `{ id, at }`.
    #[napi(ts_return_type = "Promise<AppendedEvent>")]
    pub fn append<'env>(
        &self,
        env: &'env Env,
        value: Unknown,
    ) -> Result<PromiseRaw<'env, Unknown<'env>>> {
        settle(env, || {
            let text = json_text(env, value)?;
            let events = self.events.clone();
            promise(
                env,
                async move {
                    let event = events.append_json(text).await?;
                    Ok(serde_json::json!({ "id": event.id, "at": event.at }).to_string())
                },
                parse,
            )
        })
    }

    /// `[{ id, at, value }]` in log order; options `{ since?, limit? }`
    /// where `since` is an event id (exclusive) or milliseconds.
    #[napi(ts_return_type = "Promise<unknown[]>")]
    pub fn list<'env>(
        &self,
        env: &'env Env,
        options: Option<Unknown>,
    ) -> Result<PromiseRaw<'env, Unknown<'env>>> {
        settle(env, || {
            let options = check(
                env,
                crate::js_api::event_list_options(&json_view(env, options)?),
            )?;
            let events = self.events.clone();
            promise(
                env,
                async move {
                    let rows: Vec<serde_json::Value> = events
                        .list(options)
                        .await?
                        .into_iter()
                        .map(|e| serde_json::json!({ "id": e.id, "at": e.at, "value": e.value }))
                        .collect();
                    Ok(serde_json::Value::Array(rows).to_string())
                },
                parse,
            )
        })
    }
}

/// The key-value space.
#[napi(js_name = "Kv")]
pub struct JsKv {
    kv: Kv,
}

impl JsKv {
    pub(crate) fn new(kv: Kv) -> JsKv {
        JsKv { kv }
    }
}

#[napi]
impl JsKv {
    /// Sets `key` to a JSON value.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn set<'env>(
        &self,
        env: &'env Env,
        key: String,
        value: Unknown,
    ) -> Result<PromiseRaw<'env, ()>> {
        settle(env, || {
            let text = json_text(env, value)?;
            let kv = self.kv.clone();
            promise(env, async move { kv.set_json(&key, text).await }, |_, _| {
                Ok(())
            })
        })
    }

    /// The value of `key`, or `undefined`.
    #[napi(ts_return_type = "Promise<unknown>")]
    pub fn get<'env>(
        &self,
        env: &'env Env,
        key: String,
    ) -> Result<PromiseRaw<'env, Either<Unknown<'env>, Undefined>>> {
        settle(env, || {
            let kv = self.kv.clone();
            promise(env, async move { kv.get_json(&key).await }, maybe)
        })
    }

    /// Deletes `key`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn delete<'env>(&self, env: &'env Env, key: String) -> Result<PromiseRaw<'env, ()>> {
        settle(env, || {
            let kv = self.kv.clone();
            promise(env, async move { kv.delete(&key).await }, |_, _| Ok(()))
        })
    }
}
