//! Checks this build against the known-answer vectors in
//! `tests/vectors/crypto-v1.json` (made by `scripts/crypto-vectors.py` with
//! an independent implementation). Called by the native unit tests and by
//! the browser suite, so both targets produce identical bytes.

use serde_json::Value;

use super::{envelope, DataKey, ExportedKey, NameKey, NameKind, Opener, Sealer};
use crate::change::StoreId;

/// The vectors, as checked in.
pub const VECTORS: &str = include_str!("../../tests/vectors/crypto-v1.json");

fn hex_field<const N: usize>(v: &Value, key: &str) -> Result<[u8; N], String> {
    let bytes = hex::decode(v[key].as_str().ok_or(format!("no {key}"))?)
        .map_err(|e| format!("{key}: {e}"))?;
    bytes.try_into().map_err(|_| format!("{key}: wrong length"))
}

fn hex_vec(v: &Value, key: &str) -> Result<Vec<u8>, String> {
    hex::decode(v[key].as_str().ok_or(format!("no {key}"))?).map_err(|e| format!("{key}: {e}"))
}

/// Every vector reproduces and opens; the first mismatch is the error.
pub fn check() -> Result<(), String> {
    let all: Value = serde_json::from_str(VECTORS).map_err(|e| e.to_string())?;

    let env = &all["envelope"];
    let key = DataKey::from_bytes(hex_field(env, "key")?);
    let epoch = env["epoch"].as_u64().ok_or("no epoch")? as u32;
    let context = hex_vec(env, "context")?;
    let mut sealer = Sealer::with_salt_for_test_vectors(&key, epoch, hex_field(env, "salt")?)
        .map_err(|e| e.to_string())?;
    let mut opener = Opener::new();
    for message in env["messages"].as_array().ok_or("no messages")? {
        let plaintext = hex_vec(message, "plaintext")?;
        let expected = hex_vec(message, "envelope")?;
        let sealed = sealer
            .seal(&context, &plaintext)
            .map_err(|e| e.to_string())?;
        if sealed != expected {
            return Err(format!(
                "envelope {} differs:\n got {}\nwant {}",
                message["index"],
                hex::encode(&sealed),
                hex::encode(&expected)
            ));
        }
        if envelope::epoch_of(&expected).map_err(|e| e.to_string())? != epoch {
            return Err("epoch_of".into());
        }
        let opened = opener
            .open(&key, &context, &expected)
            .map_err(|e| e.to_string())?;
        if opened != plaintext {
            return Err(format!("envelope {} opens wrongly", message["index"]));
        }
    }

    let names = &all["names"];
    let name_key = NameKey::derive(&DataKey::from_bytes(hex_field(names, "root_key")?))
        .map_err(|e| e.to_string())?;
    for case in names["hashes"].as_array().ok_or("no hashes")? {
        let kind = match case["kind"].as_u64() {
            Some(1) => NameKind::Collection,
            Some(2) => NameKind::Record,
            Some(3) => NameKind::Log,
            Some(4) => NameKind::Key,
            other => return Err(format!("kind {other:?}")),
        };
        let scope = case["scope"].as_str().ok_or("no scope")?;
        let name = case["name"].as_str().ok_or("no name")?;
        let got = name_key.hash(kind, scope, name);
        if got != case["hash"].as_str().ok_or("no hash")? {
            return Err(format!("name hash of {name:?} differs: {got}"));
        }
    }

    let export = &all["export"];
    let exported = ExportedKey {
        store: StoreId::from_bytes(hex_field(export, "store")?),
        epoch: export["epoch"].as_u64().ok_or("no epoch")? as u32,
        key: DataKey::from_bytes(hex_field(export, "key")?),
    };
    let text = export["text"].as_str().ok_or("no text")?;
    if exported.to_text().as_str() != text {
        return Err(format!(
            "export text differs: {}",
            exported.to_text().as_str()
        ));
    }
    if ExportedKey::from_text(text).map_err(|e| e.to_string())? != exported {
        return Err("export text reads back wrongly".into());
    }
    Ok(())
}
