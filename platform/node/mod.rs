//! The Node.js addon (feature `node`, napi-rs): the native store (SQLite,
//! the key file or OS keychain, TCP, QUIC, WebSocket and WebRTC-direct
//! listeners, mDNS, sync servers) behind the same JavaScript API as the
//! browser build. Values cross as JSON text (the engine's `JSON.stringify`
//! and `JSON.parse`, checked as in the browser), options through the
//! shared readers of [`crate::js_api`], errors as `Error`s whose `code` is
//! the stable code. Promises resolve on the JavaScript thread; callbacks
//! (`subscribe`, `p2p.on`, `onProgress`) are called there too.

use std::future::Future;

use napi::bindgen_prelude::*;

pub mod data;
pub mod p2p;
pub mod store;

/// A JavaScript `Error` with `code` set, as a napi error that rejects (or
/// throws) that very object.
pub(crate) fn coded(env: &Env, code: &str, message: &str) -> napi::Error {
    let error = JsError::from(napi::Error::new(code, message.to_owned()));
    napi::Error::from(error.into_unknown(*env))
}

/// A store error as a JavaScript `Error` with its code.
pub(crate) fn failed(env: &Env, error: &crate::Error) -> napi::Error {
    coded(env, error.code(), &error.to_string())
}

/// A promise of `work`'s result, converted by `to_js` on the JavaScript
/// thread; a store error rejects it with its code. `work` is first polled
/// here, on the JavaScript thread (inside the runtime's context): what
/// finishes at once (a read served by SQLite inline) resolves without a
/// trip through the runtime's threads; what waits (a write waiting for
/// its fsync) goes on there.
pub(crate) fn promise<'env, T, V, F, R>(
    env: &'env Env,
    work: F,
    to_js: R,
) -> Result<PromiseRaw<'env, V>>
where
    T: Send + 'static,
    V: ToNapiValue,
    F: Future<Output = crate::Result<T>> + Send + 'static,
    R: FnOnce(&'env Env, T) -> Result<V> + 'static,
{
    let mut work = Box::pin(work);
    let now = within_runtime_if_available(|| futures::FutureExt::now_or_never(work.as_mut()));
    match now {
        Some(Ok(value)) => PromiseRaw::resolve(env, to_js(env, value)?),
        Some(Err(e)) => PromiseRaw::reject(env, failed(env, &e)),
        None => {
            env.spawn_future_with_callback(async move { Ok(work.await) }, move |env, outcome| {
                match outcome {
                    Ok(value) => to_js(env, value),
                    Err(e) => Err(failed(env, &e)),
                }
            })
        }
    }
}

/// The global `JSON` object.
fn json(env: &Env) -> Result<Object<'static>> {
    env.get_global()?.get_named_property("JSON")
}

/// A JSON text as a JavaScript value (`JSON.parse`).
pub(crate) fn parse<'r>(env: &Env, text: String) -> Result<Unknown<'r>> {
    let parse: Function<String, Unknown<'r>> = json(env)?.get_named_property("parse")?;
    parse.call(text)
}

/// `JSON.stringify`'s replacer, installed by the package's entry
/// (`js/json-check.js`, the same function the browser build uses).
type JsonCheck = FunctionRef<FnArgs<(String, Unknown<'static>)>, Unknown<'static>>;

std::thread_local! {
    static JSON_CHECK: std::cell::RefCell<Option<JsonCheck>> = const { std::cell::RefCell::new(None) };
}

/// Installs the replacer that decides what is a JSON value (the package's
/// `node.js` calls it once, on its thread, as it loads the addon).
#[napi_derive::napi(js_name = "useJsonCheck")]
pub fn use_json_check(
    check: Function<FnArgs<(String, Unknown<'static>)>, Unknown<'static>>,
) -> Result<()> {
    let check = check.create_ref()?;
    JSON_CHECK.with(|slot| *slot.borrow_mut() = Some(check));
    Ok(())
}

/// JSON text of a value, by the engine's `JSON.stringify` with the
/// package's replacer: what JSON cannot hold is refused with
/// `INVALID_VALUE` wherever it sits (a cycle too), never dropped or turned
/// into `null` on the way.
pub(crate) fn json_text(env: &Env, value: Unknown) -> Result<String> {
    let stringify: Function<FnArgs<(Unknown, Unknown)>, Option<String>> =
        json(env)?.get_named_property("stringify")?;
    let replacer = JSON_CHECK.with(|slot| {
        slot.borrow()
            .as_ref()
            .map(|check| check.borrow_back(env).map(|f| f.to_unknown()))
            .transpose()
    })?;
    let Some(replacer) = replacer else {
        return Err(coded(
            env,
            crate::Code::InvalidOptions.as_str(),
            "load the addon through the package (import \"@cuitty/persist\"), which installs its JSON check",
        ));
    };
    let text = stringify.call((value, replacer).into()).map_err(|e| {
        // The replacer's refusals carry their code; a cycle throws the
        // engine's own TypeError: keep its words, give it the code.
        if e.reason.contains("not a JSON value") {
            e
        } else {
            coded(
                env,
                crate::Code::InvalidValue.as_str(),
                &format!("not a JSON value: {}", e.reason),
            )
        }
    })?;
    text.ok_or_else(|| {
        coded(
            env,
            crate::Code::InvalidValue.as_str(),
            "not a JSON value: it has no JSON form",
        )
    })
}

/// A JSON view of an options argument (`Null` when absent): what the
/// shared option readers take. Functions in it (callbacks) are left out;
/// the binding reads those itself.
pub(crate) fn json_view(env: &Env, options: Option<Unknown>) -> Result<serde_json::Value> {
    let Some(options) = options else {
        return Ok(serde_json::Value::Null);
    };
    let stringify: Function<Unknown, Option<String>> =
        json(env)?.get_named_property("stringify")?;
    let invalid = |why: String| {
        coded(
            env,
            crate::Code::InvalidOptions.as_str(),
            &format!("options are not a plain object: {why}"),
        )
    };
    let Some(text) = stringify
        .call(options)
        .map_err(|e| invalid(e.reason.clone()))?
    else {
        return Ok(serde_json::Value::Null);
    };
    serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))
}

/// A store error of a synchronous call, thrown with its code.
pub(crate) fn check<T>(env: &Env, result: crate::Result<T>) -> Result<T> {
    result.map_err(|e| failed(env, &e))
}

/// The promise a method returns, or, when the method failed before it
/// had one (a value with no JSON form, a bad option), a promise rejected
/// with that error: a method that returns a promise never throws.
pub(crate) fn settle<'env, V: ToNapiValue>(
    env: &'env Env,
    made: impl FnOnce() -> Result<PromiseRaw<'env, V>>,
) -> Result<PromiseRaw<'env, V>> {
    match made() {
        Ok(promise) => Ok(promise),
        Err(error) => PromiseRaw::reject(env, error),
    }
}
