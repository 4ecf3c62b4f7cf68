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
/// thread; a store error rejects it with its code.
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
    env.spawn_future_with_callback(
        async move { Ok(work.await) },
        move |env, outcome| match outcome {
            Ok(value) => to_js(env, value),
            Err(e) => Err(failed(env, &e)),
        },
    )
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

/// JSON text of a value, by the engine's `JSON.stringify` (`toJSON`
/// applies, so a `Date` is its ISO text). What JSON cannot hold is refused
/// with `INVALID_VALUE` wherever it sits, never dropped or turned into
/// `null` on the way: `undefined`, a function, a symbol, a `BigInt`, `NaN`
/// and the infinities, a `Map` or a `Set`, a cycle.
pub(crate) fn json_text(env: &Env, value: Unknown) -> Result<String> {
    let stringify: Function<FnArgs<(Unknown, Unknown)>, Option<String>> =
        json(env)?.get_named_property("stringify")?;
    let replacer: Function<FnArgs<(String, Unknown<'static>)>, Unknown<'static>> = env
        .create_function_from_closure("persistJsonCheck", |ctx| {
            let value: Unknown<'static> = ctx.get(1)?;
            if let Some(what) = refusal(ctx.env, &value, || ctx.get::<f64>(1))? {
                let key: String = ctx.get(0)?;
                let message = if key.is_empty() {
                    what.to_owned()
                } else {
                    format!("{what} at key {key:?}")
                };
                return Err(coded(ctx.env, crate::Code::InvalidValue.as_str(), &message));
            }
            Ok(value)
        })?;
    let text = stringify
        .call((value, replacer.to_unknown()).into())
        .map_err(|e| {
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

/// Why `value` has no faithful JSON form, if it has none.
fn refusal(
    env: &Env,
    value: &Unknown,
    number: impl FnOnce() -> Result<f64>,
) -> Result<Option<&'static str>> {
    Ok(match value.get_type()? {
        ValueType::Undefined => {
            Some("not a JSON value: undefined (use null, or leave the key out)")
        }
        ValueType::Function => Some("not a JSON value: a function"),
        ValueType::Symbol => Some("not a JSON value: a symbol"),
        ValueType::BigInt => Some("not a JSON value: a BigInt (store it as a string)"),
        ValueType::External => Some("not a JSON value: a native handle"),
        ValueType::Number if !number()?.is_finite() => {
            Some("not a JSON value: a number that is not finite")
        }
        ValueType::Object => {
            let global = env.get_global()?;
            if value.instanceof(global.get_named_property::<Function>("Map")?)? {
                Some("not a JSON value: a Map (use a plain object)")
            } else if value.instanceof(global.get_named_property::<Function>("Set")?)? {
                Some("not a JSON value: a Set (use an array)")
            } else {
                None
            }
        }
        _ => None,
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
        Err(error) => {
            env.spawn_future_with_callback(async { Ok(()) }, move |_, ()| Err::<V, _>(error))
        }
    }
}
