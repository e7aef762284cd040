//! The machinery behind the config schema: a `section!` macro that declares a config struct
//! together with its defaults and documentation, so that `docs/reference/config.md` and
//! `mailwarden config show` are generated from the same source the server reads.

use std::path::PathBuf;

/// One key of a section, as documented.
#[derive(Debug, Clone)]
pub struct FieldDoc {
    pub name: &'static str,
    pub doc: &'static str,
    pub type_name: String,
    /// Overrides the rendered default when the default depends on the machine.
    pub default_doc: Option<&'static str>,
    /// Sub-section keys, when the field is itself a section.
    pub fields: Option<Vec<FieldDoc>>,
    /// The documentation of the field's type, when it is a section.
    pub section_doc: &'static str,
}

/// Implemented by every type a config key can have.
pub trait Describe {
    fn type_name() -> String;
    /// `Some` for sections (tables), `None` for values.
    fn fields() -> Option<Vec<FieldDoc>> {
        None
    }
    /// Section-level documentation.
    fn section_doc() -> &'static str {
        ""
    }
}

macro_rules! leaf {
    ($($t:ty => $n:expr),* $(,)?) => {
        $(impl Describe for $t { fn type_name() -> String { $n.to_string() } })*
    };
}

leaf! {
    String => "string",
    PathBuf => "path",
    bool => "boolean",
    u16 => "integer",
    u32 => "integer",
    u64 => "integer",
    usize => "integer",
    f64 => "number",
}

impl<T: Describe> Describe for Vec<T> {
    fn type_name() -> String {
        format!("array of {}", T::type_name())
    }
}

impl<T: Describe> Describe for std::collections::BTreeMap<String, T> {
    fn type_name() -> String {
        format!("table of {}", T::type_name())
    }
}

impl<T: Describe> Describe for Option<T> {
    fn type_name() -> String {
        format!("{} (optional)", T::type_name())
    }
}

/// Declare a config section. Each field is `name: Type = default`, with doc comments; a field
/// whose default depends on the machine adds `#[default_doc = "..."]` after its docs.
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $(#[default_doc = $ddoc:literal])?
                pub $field:ident : $ty:ty = $default:expr
            ),* $(,)?
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }

        impl $crate::config::schema::Describe for $name {
            fn type_name() -> String {
                "section".to_string()
            }
            fn section_doc() -> &'static str {
                concat!($($sdoc, "\n"),*)
            }
            fn fields() -> Option<Vec<$crate::config::schema::FieldDoc>> {
                Some(vec![$(
                    $crate::config::schema::FieldDoc {
                        name: stringify!($field),
                        doc: concat!($($doc, "\n"),*),
                        type_name: <$ty as $crate::config::schema::Describe>::type_name(),
                        default_doc: section!(@ddoc $($ddoc)?),
                        fields: <$ty as $crate::config::schema::Describe>::fields(),
                        section_doc: <$ty as $crate::config::schema::Describe>::section_doc(),
                    }
                ),*])
            }
        }
    };
    (@ddoc $d:literal) => { Some($d) };
    (@ddoc) => { None };
}

/// Declare a string-valued enum for config (`mode = "enforce"`), with its documentation.
macro_rules! choice {
    (
        $(#[doc = $sdoc:literal])*
        pub enum $name:ident { $( $(#[doc = $vdoc:literal])* $variant:ident = $text:literal ),* $(,)? }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[doc = $vdoc])* #[serde(rename = $text)] $variant, )*
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text, )* }
            }
        }

        impl $crate::config::schema::Describe for $name {
            fn type_name() -> String {
                let v: &[&str] = &[$(concat!("\"", $text, "\"")),*];
                format!("one of {}", v.join(", "))
            }
        }
    };
}

pub(crate) use {choice, section};
