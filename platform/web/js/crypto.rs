//! `store.crypto`: key export and rotation of an encrypted store.

use crate::error::Code;
use js_sys::Function;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use super::error::js_error;
use super::value::option;
use crate::store::{RotationProgress, StoreCrypto};

/// Key management of an encrypted store; the package's `StoreCrypto`
/// (`js/index.js`, `store.crypto`) wraps it and adds invites.
#[wasm_bindgen(js_name = StoreCryptoHandle)]
pub struct JsStoreCrypto {
    crypto: StoreCrypto,
}

impl JsStoreCrypto {
    pub(crate) fn new(crypto: StoreCrypto) -> JsStoreCrypto {
        JsStoreCrypto { crypto }
    }
}

/// `{ epoch, table, scanned, resealed, done }` for `onProgress` and results.
fn progress_object(progress: &RotationProgress) -> Result<JsValue, JsValue> {
    super::value::to_js(&crate::js_api::rotation(progress))
}

fn progress_callback(options: &JsValue) -> Result<Option<Function>, JsValue> {
    let callback = option(options, "onProgress");
    if callback.is_undefined() || callback.is_null() {
        return Ok(None);
    }
    callback
        .dyn_into::<Function>()
        .map(Some)
        .map_err(|_| js_error(Code::InvalidOptions, "onProgress must be a function"))
}

fn report(callback: &Option<Function>) -> impl FnMut(&RotationProgress) + '_ {
    move |progress| {
        if let Some(callback) = callback {
            // A throwing callback does not stop the rotation.
            if let Ok(progress) = progress_object(progress) {
                let _ = callback.call1(&JsValue::UNDEFINED, &progress);
            }
        }
    }
}

#[wasm_bindgen(js_class = StoreCryptoHandle)]
impl JsStoreCrypto {
    /// True when the store is encrypted.
    #[wasm_bindgen(getter)]
    pub fn encrypted(&self) -> bool {
        self.crypto.is_encrypted()
    }

    /// The epoch new data is sealed under.
    pub fn epoch(&self) -> Result<u32, JsValue> {
        Ok(self.crypto.epoch()?)
    }

    /// The current key as `persist-key-v1-...` text.
    #[wasm_bindgen(js_name = exportKey)]
    pub fn export_key(&self) -> js_sys::Promise {
        let crypto = self.crypto.clone();
        future_to_promise(async move {
            let text = crypto.export_key()?;
            Ok(JsValue::from_str(text.as_str()))
        })
    }

    /// A new key epoch, then re-encryption of stored data with
    /// `onProgress({ epoch, table, scanned, resealed, done })`.
    #[wasm_bindgen(js_name = rotateKey)]
    pub fn rotate_key(&self, options: JsValue) -> Result<js_sys::Promise, JsValue> {
        let crypto = self.crypto.clone();
        let callback = progress_callback(&options)?;
        Ok(future_to_promise(async move {
            let done = crypto.rotate_key(report(&callback)).await?;
            progress_object(&done)
        }))
    }

    /// Finishes an interrupted rotation (the store also does it by itself
    /// when it opens); resolves `null` when there is none.
    #[wasm_bindgen(js_name = resumeRotation)]
    pub fn resume_rotation(&self, options: JsValue) -> Result<js_sys::Promise, JsValue> {
        let crypto = self.crypto.clone();
        let callback = progress_callback(&options)?;
        Ok(future_to_promise(async move {
            let done = crypto.resume_rotation(report(&callback)).await?;
            match done {
                Some(done) => progress_object(&done),
                None => Ok(JsValue::NULL),
            }
        }))
    }
}
