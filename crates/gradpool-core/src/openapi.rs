//! OpenAPI schemas of the types whose JSON is a string the derive cannot
//! see through: states (one of their spellings) and bytes written as hex.
//! Built with the `openapi` feature, for the pool's `GET /v1/openapi.json`.

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;

/// A string that is one of `values`.
pub(crate) fn one_of_strings<'a>(values: impl Iterator<Item = &'a str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.map(str::to_owned)))
        .into()
}

/// `what`, `bytes` long (any length with `None`), as lowercase hex.
pub(crate) fn hex_string(bytes: Option<usize>, what: &str) -> RefOr<Schema> {
    let (pattern, length) = match bytes {
        Some(n) => (format!("^[0-9a-f]{{{}}}$", 2 * n), format!("{n} bytes")),
        None => ("^([0-9a-f]{2})*$".to_owned(), "bytes".to_owned()),
    };
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(format!("{what}: {length} as lowercase hex")))
        .pattern(Some(pattern))
        .into()
}

/// Implements `ToSchema` for `$name`, written as `$len` bytes of hex
/// (`None`: any length).
macro_rules! hex_schema {
    ($name:ty, $len:expr, $what:expr) => {
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $crate::openapi::hex_string($len.into(), $what)
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}
pub(crate) use hex_schema;
