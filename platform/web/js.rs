//! The JavaScript API (`@cuitty/persist`): thin `wasm-bindgen` wrappers over
//! cloneable Rust handles, one exported class per file. Values cross the
//! boundary as JSON-compatible plain objects (never `Map`); every error is a
//! JavaScript `Error` with a stable `code`.

mod crypto;
mod error;
mod events;
mod kv;
mod p2p;
mod records;
mod store;
mod value;

pub use crypto::JsStoreCrypto;
pub use events::JsEvents;
pub use kv::JsKv;
pub use p2p::JsP2p;
pub use records::JsRecords;
pub use store::{create_store, JsStore};
pub use value::use_json_check;
