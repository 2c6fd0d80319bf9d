//! The two macros the record conversions are written with, so that a record's
//! field list is written once. Both destructure the source completely: a field
//! added to either type does not compile until it is listed.
//!
//! A field converts as written (`name: Type`, the same type on both sides),
//! `as into` (one `From` conversion, e.g. an enum or a nested record) or
//! `as each` (a list, element by element).

/// `convert_fields!(From => To { field, field as into, field as each })`:
/// `impl From<From> for To`, field by field under the same names.
macro_rules! convert_fields {
    ($from:path => $to:path { $($field:ident $(as $how:ident)?),* $(,)? }) => {
        impl From<$from> for $to {
            fn from(value: $from) -> Self {
                let $from { $($field),* } = value;
                $to { $($field: convert_field!($($how)?; $field)),* }
            }
        }
    };
}

/// One field's conversion for `convert_fields!`.
macro_rules! convert_field {
    (; $value:expr) => {
        $value
    };
    (into; $value:expr) => {
        $value.into()
    };
    (each; $value:expr) => {
        $value.into_iter().map(Into::into).collect()
    };
}

/// Declares a stored record (every field `pub`, with the attributes written
/// before it) and its conversions both ways with the domain type of the same
/// fields: from the domain type by value and by reference (cloned), back to it
/// by value.
macro_rules! record {
    (
        $(#[$meta:meta])*
        pub struct $name:ident <=> $domain:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty $(as $how:ident)? ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty ),*
        }
        convert_fields!($domain => $name { $($field $(as $how)?),* });
        convert_fields!($name => $domain { $($field $(as $how)?),* });
        impl From<&$domain> for $name {
            fn from(value: &$domain) -> Self {
                value.clone().into()
            }
        }
    };
}
