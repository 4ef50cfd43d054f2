//! Business annotations of a call: use case, user, account, limits, tags and properties.
//!
//! Built once (usually per use case, or per user session) with [`Annotations::builder`], validated
//! there, and then cheap to clone: the fields sit behind an `Arc`. The same values travel as
//! Pay-i's `xProxy-*` headers ([`Annotations::to_headers`], [`Annotations::from_headers`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::names;

/// Longest accepted free-form value (ids, names, property values), in bytes.
pub const MAX_VALUE_LEN: usize = 256;
/// Longest accepted use case name, tag, limit id or property key, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Most limit ids, tags or properties one call may carry.
pub const MAX_ITEMS: usize = 32;

/// The annotations of one call. Cheap to clone; empty by default.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Annotations(Option<Arc<Fields>>);

#[derive(Clone, Default, PartialEq, Eq, Debug)]
struct Fields {
    use_case_name: Option<String>,
    use_case_id: Option<String>,
    use_case_version: Option<String>,
    use_case_step: Option<String>,
    use_case_properties: BTreeMap<String, String>,
    user_id: Option<String>,
    account_name: Option<String>,
    limit_ids: Vec<String>,
    request_tags: Vec<String>,
    request_properties: BTreeMap<String, String>,
}

/// Which annotation a validation error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnnotationField {
    /// `use_case_name` / `xProxy-UseCase-Name`.
    UseCaseName,
    /// `use_case_id` / `xProxy-UseCase-ID`.
    UseCaseId,
    /// `use_case_version` / `xProxy-UseCase-Version`.
    UseCaseVersion,
    /// `use_case_step` / `xProxy-UseCase-Step`.
    UseCaseStep,
    /// `use_case_properties` / `xProxy-UseCase-Properties`.
    UseCaseProperties,
    /// `user_id` / `xProxy-User-ID`.
    UserId,
    /// `account_name` / `xProxy-Account-Name`.
    AccountName,
    /// `limit_ids` / `xProxy-Limit-IDs`.
    LimitIds,
    /// `request_tags` / `xProxy-Request-Tags`.
    RequestTags,
    /// `request_properties` / `xProxy-Request-Properties`.
    RequestProperties,
}

impl AnnotationField {
    /// Every field, in the order of Pay-i's headers list.
    pub const ALL: [AnnotationField; 10] = [
        AnnotationField::UseCaseName,
        AnnotationField::UseCaseId,
        AnnotationField::UseCaseVersion,
        AnnotationField::UseCaseStep,
        AnnotationField::UseCaseProperties,
        AnnotationField::UserId,
        AnnotationField::AccountName,
        AnnotationField::LimitIds,
        AnnotationField::RequestTags,
        AnnotationField::RequestProperties,
    ];

    /// The builder field name.
    pub fn name(self) -> &'static str {
        match self {
            AnnotationField::UseCaseName => "use_case_name",
            AnnotationField::UseCaseId => "use_case_id",
            AnnotationField::UseCaseVersion => "use_case_version",
            AnnotationField::UseCaseStep => "use_case_step",
            AnnotationField::UseCaseProperties => "use_case_properties",
            AnnotationField::UserId => "user_id",
            AnnotationField::AccountName => "account_name",
            AnnotationField::LimitIds => "limit_ids",
            AnnotationField::RequestTags => "request_tags",
            AnnotationField::RequestProperties => "request_properties",
        }
    }

    /// The Pay-i header carrying this field.
    pub fn header(self) -> &'static str {
        match self {
            AnnotationField::UseCaseName => names::HEADER_USE_CASE_NAME,
            AnnotationField::UseCaseId => names::HEADER_USE_CASE_ID,
            AnnotationField::UseCaseVersion => names::HEADER_USE_CASE_VERSION,
            AnnotationField::UseCaseStep => names::HEADER_USE_CASE_STEP,
            AnnotationField::UseCaseProperties => names::HEADER_USE_CASE_PROPERTIES,
            AnnotationField::UserId => names::HEADER_USER_ID,
            AnnotationField::AccountName => names::HEADER_ACCOUNT_NAME,
            AnnotationField::LimitIds => names::HEADER_LIMIT_IDS,
            AnnotationField::RequestTags => names::HEADER_REQUEST_TAGS,
            AnnotationField::RequestProperties => names::HEADER_REQUEST_PROPERTIES,
        }
    }
}

/// A rejected annotation: which field, and which rule it broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnotationError {
    /// The field (and header) at fault.
    pub field: AnnotationField,
    /// The rule, in words.
    pub rule: String,
}

impl fmt::Display for AnnotationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} ({}): {}",
            self.field.name(),
            self.field.header(),
            self.rule
        )
    }
}

impl std::error::Error for AnnotationError {}

fn err(field: AnnotationField, rule: impl Into<String>) -> AnnotationError {
    AnnotationError {
        field,
        rule: rule.into(),
    }
}

/// Builder for [`Annotations`]; every rule is checked in [`AnnotationsBuilder::build`].
#[derive(Default, Debug)]
pub struct AnnotationsBuilder {
    fields: Fields,
}

impl AnnotationsBuilder {
    /// Use case name: `[A-Za-z0-9._-]{1,64}`. The main metric label.
    pub fn use_case_name(mut self, v: impl Into<String>) -> Self {
        self.fields.use_case_name = Some(v.into());
        self
    }
    /// Use case (instance) id.
    pub fn use_case_id(mut self, v: impl Into<String>) -> Self {
        self.fields.use_case_id = Some(v.into());
        self
    }
    /// Use case version.
    pub fn use_case_version(mut self, v: impl Into<String>) -> Self {
        self.fields.use_case_version = Some(v.into());
        self
    }
    /// Use case step.
    pub fn use_case_step(mut self, v: impl Into<String>) -> Self {
        self.fields.use_case_step = Some(v.into());
        self
    }
    /// Adds one use case property.
    pub fn use_case_property(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.fields.use_case_properties.insert(k.into(), v.into());
        self
    }
    /// End user id (recorded on spans; a metric label only when opted in).
    pub fn user_id(mut self, v: impl Into<String>) -> Self {
        self.fields.user_id = Some(v.into());
        self
    }
    /// Account name.
    pub fn account_name(mut self, v: impl Into<String>) -> Self {
        self.fields.account_name = Some(v.into());
        self
    }
    /// Adds limit ids; each is trimmed, empty ones are dropped.
    pub fn limit_ids<I, S>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.fields.limit_ids.extend(ids.into_iter().map(Into::into));
        self
    }
    /// Adds one request tag: `[A-Za-z0-9_-]{1,64}`.
    pub fn request_tag(mut self, tag: impl Into<String>) -> Self {
        self.fields.request_tags.push(tag.into());
        self
    }
    /// Adds request tags.
    pub fn request_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.fields.request_tags.extend(tags.into_iter().map(Into::into));
        self
    }
    /// Adds one request property.
    pub fn request_property(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.fields.request_properties.insert(k.into(), v.into());
        self
    }

    /// Validates every field and returns the annotations, or the first rule broken.
    pub fn build(mut self) -> Result<Annotations, AnnotationError> {
        let f = &mut self.fields;
        if let Some(name) = &f.use_case_name {
            check_name(
                AnnotationField::UseCaseName,
                name,
                |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
                "[A-Za-z0-9._-]",
            )?;
        }
        for (field, value) in [
            (AnnotationField::UseCaseId, &f.use_case_id),
            (AnnotationField::UseCaseVersion, &f.use_case_version),
            (AnnotationField::UseCaseStep, &f.use_case_step),
            (AnnotationField::UserId, &f.user_id),
            (AnnotationField::AccountName, &f.account_name),
        ] {
            if let Some(v) = value {
                check_value(field, v)?;
            }
        }
        f.limit_ids.retain_mut(|id| {
            let trimmed = id.trim();
            if trimmed.len() != id.len() {
                *id = trimmed.to_owned();
            }
            !id.is_empty()
        });
        check_count(AnnotationField::LimitIds, f.limit_ids.len())?;
        for id in &f.limit_ids {
            check_value(AnnotationField::LimitIds, id)?;
            if id.len() > MAX_NAME_LEN {
                return Err(err(
                    AnnotationField::LimitIds,
                    format!("a limit id is longer than {MAX_NAME_LEN} bytes"),
                ));
            }
            if id.contains(',') {
                return Err(err(AnnotationField::LimitIds, "a limit id must not contain ','"));
            }
        }
        check_count(AnnotationField::RequestTags, f.request_tags.len())?;
        for tag in &f.request_tags {
            check_name(
                AnnotationField::RequestTags,
                tag,
                |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'),
                "[A-Za-z0-9_-]",
            )?;
        }
        check_properties(AnnotationField::UseCaseProperties, &f.use_case_properties)?;
        check_properties(AnnotationField::RequestProperties, &f.request_properties)?;
        if self.fields == Fields::default() {
            return Ok(Annotations(None));
        }
        Ok(Annotations(Some(Arc::new(self.fields))))
    }
}

fn check_count(field: AnnotationField, n: usize) -> Result<(), AnnotationError> {
    if n > MAX_ITEMS {
        return Err(err(field, format!("at most {MAX_ITEMS} items, got {n}")));
    }
    Ok(())
}

fn check_value(field: AnnotationField, v: &str) -> Result<(), AnnotationError> {
    if v.is_empty() {
        return Err(err(field, "must not be empty"));
    }
    if v.len() > MAX_VALUE_LEN {
        return Err(err(field, format!("longer than {MAX_VALUE_LEN} bytes")));
    }
    if v.chars().any(char::is_control) {
        return Err(err(field, "must not contain control characters (CR, LF, ...)"));
    }
    if v.starts_with(' ') || v.ends_with(' ') {
        return Err(err(field, "must not start or end with a space (HTTP trims it)"));
    }
    Ok(())
}

fn check_name(
    field: AnnotationField,
    v: &str,
    allowed: impl Fn(char) -> bool,
    class: &str,
) -> Result<(), AnnotationError> {
    if v.is_empty() || v.len() > MAX_NAME_LEN || !v.chars().all(allowed) {
        return Err(err(field, format!("{v:?} does not match {class}{{1,{MAX_NAME_LEN}}}")));
    }
    Ok(())
}

fn check_properties(field: AnnotationField, props: &BTreeMap<String, String>) -> Result<(), AnnotationError> {
    check_count(field, props.len())?;
    for (k, v) in props {
        check_name(
            field,
            k,
            |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
            "keys: [A-Za-z0-9._-]",
        )?;
        if v.len() > MAX_VALUE_LEN || v.chars().any(char::is_control) {
            return Err(err(
                field,
                format!("value of {k:?} is longer than {MAX_VALUE_LEN} bytes or holds control characters"),
            ));
        }
    }
    Ok(())
}

const EMPTY_MAP: &BTreeMap<String, String> = &BTreeMap::new();

impl Annotations {
    /// Starts a builder.
    pub fn builder() -> AnnotationsBuilder {
        AnnotationsBuilder::default()
    }

    /// No annotations at all.
    pub fn none() -> Self {
        Self(None)
    }

    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn get<T: ?Sized>(&self, f: impl FnOnce(&Fields) -> Option<&T>) -> Option<&T> {
        self.0.as_deref().and_then(f)
    }

    /// Use case name.
    pub fn use_case_name(&self) -> Option<&str> {
        self.get(|f| f.use_case_name.as_deref())
    }
    /// Use case id.
    pub fn use_case_id(&self) -> Option<&str> {
        self.get(|f| f.use_case_id.as_deref())
    }
    /// Use case version.
    pub fn use_case_version(&self) -> Option<&str> {
        self.get(|f| f.use_case_version.as_deref())
    }
    /// Use case step.
    pub fn use_case_step(&self) -> Option<&str> {
        self.get(|f| f.use_case_step.as_deref())
    }
    /// Use case properties, sorted by key.
    pub fn use_case_properties(&self) -> &BTreeMap<String, String> {
        self.get(|f| Some(&f.use_case_properties)).unwrap_or(EMPTY_MAP)
    }
    /// End user id.
    pub fn user_id(&self) -> Option<&str> {
        self.get(|f| f.user_id.as_deref())
    }
    /// Account name.
    pub fn account_name(&self) -> Option<&str> {
        self.get(|f| f.account_name.as_deref())
    }
    /// Limit ids, trimmed, in the order given.
    pub fn limit_ids(&self) -> &[String] {
        self.get(|f| Some(f.limit_ids.as_slice())).unwrap_or(&[])
    }
    /// Request tags, in the order given.
    pub fn request_tags(&self) -> &[String] {
        self.get(|f| Some(f.request_tags.as_slice())).unwrap_or(&[])
    }
    /// Request properties, sorted by key.
    pub fn request_properties(&self) -> &BTreeMap<String, String> {
        self.get(|f| Some(&f.request_properties)).unwrap_or(EMPTY_MAP)
    }

    /// Renders the annotations as Pay-i `xProxy-*` headers (like Pay-i's `create_headers`).
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        self.write_headers(&mut headers);
        headers
    }

    /// Writes the `xProxy-*` headers into `headers`, replacing any already there.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let Some(f) = self.0.as_deref() else { return };
        let mut put = |name: &'static str, value: &str| {
            // Validated values hold no control characters, so this cannot fail; skip if it did.
            if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
                // `from_bytes` lowercases Pay-i's spelling; the names are valid constants.
                if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                    headers.insert(name, v);
                }
            }
        };
        let singles = [
            (names::HEADER_USE_CASE_NAME, &f.use_case_name),
            (names::HEADER_USE_CASE_ID, &f.use_case_id),
            (names::HEADER_USE_CASE_VERSION, &f.use_case_version),
            (names::HEADER_USE_CASE_STEP, &f.use_case_step),
            (names::HEADER_USER_ID, &f.user_id),
            (names::HEADER_ACCOUNT_NAME, &f.account_name),
        ];
        for (name, value) in singles {
            if let Some(v) = value {
                put(name, v);
            }
        }
        if !f.limit_ids.is_empty() {
            put(names::HEADER_LIMIT_IDS, &f.limit_ids.join(","));
        }
        if !f.request_tags.is_empty() {
            put(names::HEADER_REQUEST_TAGS, &f.request_tags.join(","));
        }
        for (name, props) in [
            (names::HEADER_USE_CASE_PROPERTIES, &f.use_case_properties),
            (names::HEADER_REQUEST_PROPERTIES, &f.request_properties),
        ] {
            if !props.is_empty() {
                put(name, &serde_json::to_string(props).unwrap_or_default());
            }
        }
    }

    /// Parses `xProxy-*` headers (names case-insensitive). Other headers are ignored; a header
    /// present with an invalid value is an error naming that header.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, AnnotationError> {
        // One pass over the names (stored lowercase) instead of a lookup per field: most
        // requests carry no `xProxy-*` header at all. The first value of a header counts.
        let mut found: [Option<&HeaderValue>; AnnotationField::ALL.len()] = [None; AnnotationField::ALL.len()];
        for (name, value) in headers {
            if !name.as_str().starts_with(names::HEADER_XPROXY_PREFIX) {
                continue;
            }
            if let Some(field) = AnnotationField::ALL
                .into_iter()
                .find(|f| f.header().eq_ignore_ascii_case(name.as_str()))
            {
                found[field as usize].get_or_insert(value);
            }
        }
        if found.iter().all(Option::is_none) {
            return Ok(Annotations::none());
        }
        let text = |field: AnnotationField| -> Result<Option<&str>, AnnotationError> {
            match found[field as usize] {
                None => Ok(None),
                Some(v) => std::str::from_utf8(v.as_bytes())
                    .map(Some)
                    .map_err(|_| err(field, "not valid UTF-8")),
            }
        };
        let mut b = Annotations::builder();
        let f = &mut b.fields;
        f.use_case_name = text(AnnotationField::UseCaseName)?.map(str::to_owned);
        f.use_case_id = text(AnnotationField::UseCaseId)?.map(str::to_owned);
        f.use_case_version = text(AnnotationField::UseCaseVersion)?.map(str::to_owned);
        f.use_case_step = text(AnnotationField::UseCaseStep)?.map(str::to_owned);
        f.user_id = text(AnnotationField::UserId)?.map(str::to_owned);
        f.account_name = text(AnnotationField::AccountName)?.map(str::to_owned);
        if let Some(ids) = text(AnnotationField::LimitIds)? {
            f.limit_ids = ids.split(',').map(str::to_owned).collect();
        }
        if let Some(tags) = text(AnnotationField::RequestTags)? {
            f.request_tags = tags
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(json) = text(AnnotationField::UseCaseProperties)? {
            f.use_case_properties = parse_properties(AnnotationField::UseCaseProperties, json)?;
        }
        if let Some(json) = text(AnnotationField::RequestProperties)? {
            f.request_properties = parse_properties(AnnotationField::RequestProperties, json)?;
        }
        b.build()
    }
}

fn parse_properties(field: AnnotationField, json: &str) -> Result<BTreeMap<String, String>, AnnotationError> {
    serde_json::from_str(json).map_err(|e| err(field, format!("must be a JSON object of string values: {e}")))
}

impl fmt::Debug for Annotations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(fields) => fields.fmt(f),
            None => f.write_str("Annotations(none)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Annotations {
        Annotations::builder()
            .use_case_name("support.triage-v2")
            .use_case_id("uc-123")
            .use_case_version("3")
            .use_case_step("classify")
            .use_case_property("team", "care")
            .user_id("user@example.com")
            .account_name("Acme Ltd")
            .limit_ids([" daily ", "", "monthly"])
            .request_tags(["beta", "eu_west-1"])
            .request_property("ticket", "T-1")
            .build()
            .unwrap()
    }

    #[test]
    fn limit_ids_are_trimmed_and_empty_ones_dropped() {
        assert_eq!(full().limit_ids(), ["daily", "monthly"]);
    }

    #[test]
    fn headers_carry_payi_names_and_compact_json() {
        let h = full().to_headers();
        assert_eq!(h["xProxy-UseCase-Name"], "support.triage-v2");
        assert_eq!(h["xProxy-Limit-IDs"], "daily,monthly");
        assert_eq!(h["xProxy-Request-Tags"], "beta,eu_west-1");
        assert_eq!(h["xProxy-UseCase-Properties"], r#"{"team":"care"}"#);
        assert_eq!(h["xProxy-Request-Properties"], r#"{"ticket":"T-1"}"#);
        assert_eq!(h["xProxy-User-ID"], "user@example.com");
        assert_eq!(h.len(), 10);
    }

    #[test]
    fn every_field_names_one_of_the_headers_a_full_set_writes() {
        let h = full().to_headers();
        let mut named: Vec<&str> = AnnotationField::ALL.iter().map(|f| f.header()).collect();
        assert!(named.iter().all(|name| h.contains_key(*name)), "{named:?}");
        named.sort_unstable();
        named.dedup();
        assert_eq!(named.len(), h.len());
    }

    #[test]
    fn headers_round_trip() {
        let a = full();
        assert_eq!(Annotations::from_headers(&a.to_headers()).unwrap(), a);
    }

    #[test]
    fn header_names_are_case_insensitive_on_the_way_in() {
        let mut h = HeaderMap::new();
        h.insert("XPROXY-USECASE-NAME", HeaderValue::from_static("chat"));
        h.insert("xproxy-limit-ids", HeaderValue::from_static("a, b ,,c"));
        let a = Annotations::from_headers(&h).unwrap();
        assert_eq!(a.use_case_name(), Some("chat"));
        assert_eq!(a.limit_ids(), ["a", "b", "c"]);
    }

    #[test]
    fn no_headers_means_empty_annotations() {
        let a = Annotations::from_headers(&HeaderMap::new()).unwrap();
        assert!(a.is_empty());
        assert!(a.to_headers().is_empty());
        // Neither other headers nor an `xProxy-*` header that is not an annotation make any.
        let mut other = HeaderMap::new();
        other.insert("authorization", HeaderValue::from_static("Bearer sk-test"));
        other.insert("xproxy-unknown", HeaderValue::from_static("x"));
        assert!(Annotations::from_headers(&other).unwrap().is_empty());
    }

    #[test]
    fn bad_values_are_rejected_naming_the_field_and_rule() {
        let cases: Vec<(AnnotationsBuilder, AnnotationField, &str)> = vec![
            (
                Annotations::builder().use_case_name("has space"),
                AnnotationField::UseCaseName,
                "[A-Za-z0-9._-]",
            ),
            (
                Annotations::builder().use_case_name(""),
                AnnotationField::UseCaseName,
                "[A-Za-z0-9._-]",
            ),
            (
                Annotations::builder().use_case_name("x".repeat(65)),
                AnnotationField::UseCaseName,
                "{1,64}",
            ),
            (Annotations::builder().user_id(""), AnnotationField::UserId, "empty"),
            (
                Annotations::builder().user_id("a\r\nX-Evil: 1"),
                AnnotationField::UserId,
                "control",
            ),
            (
                Annotations::builder().account_name("x".repeat(257)),
                AnnotationField::AccountName,
                "longer",
            ),
            (
                Annotations::builder().request_tag("a.b"),
                AnnotationField::RequestTags,
                "[A-Za-z0-9_-]",
            ),
            (
                Annotations::builder().request_tag(""),
                AnnotationField::RequestTags,
                "[A-Za-z0-9_-]",
            ),
            (
                Annotations::builder().request_tags((0..33).map(|i| format!("t{i}"))),
                AnnotationField::RequestTags,
                "at most 32",
            ),
            (
                Annotations::builder().limit_ids(["a\tb"]),
                AnnotationField::LimitIds,
                "control",
            ),
            (
                Annotations::builder().request_property("bad key", "v"),
                AnnotationField::RequestProperties,
                "keys",
            ),
            (
                Annotations::builder().use_case_property("k", "\n"),
                AnnotationField::UseCaseProperties,
                "control",
            ),
        ];
        for (builder, field, rule) in cases {
            let e = builder.build().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(rule), "{e} should mention {rule}");
            assert!(e.to_string().contains(field.header()), "{e}");
        }
    }

    #[test]
    fn invalid_header_json_names_the_header() {
        let mut h = HeaderMap::new();
        h.insert("xproxy-request-properties", HeaderValue::from_static("{\"a\":1}"));
        let e = Annotations::from_headers(&h).unwrap_err();
        assert_eq!(e.field, AnnotationField::RequestProperties);
        assert!(e.to_string().contains("xProxy-Request-Properties"));
    }

    #[test]
    fn non_utf8_header_is_rejected() {
        let mut h = HeaderMap::new();
        h.insert("xproxy-user-id", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        assert_eq!(
            Annotations::from_headers(&h).unwrap_err().field,
            AnnotationField::UserId
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn opt(re: &'static str) -> impl Strategy<Value = Option<String>> {
            proptest::option::of(re.prop_map(|s: String| s))
        }

        prop_compose! {
            fn valid()(
                name in opt("[A-Za-z0-9._-]{1,64}"),
                id in opt("[^\\p{Cc} ]([^\\p{Cc}]{0,38}[^\\p{Cc} ])?"),
                user in opt("[^\\p{Cc} ]([^\\p{Cc}]{0,38}[^\\p{Cc} ])?"),
                account in opt("[a-zA-Z ]{1,20}"),
                limits in proptest::collection::vec("[a-z0-9_-]{1,20}", 0..5),
                tags in proptest::collection::vec("[A-Za-z0-9_-]{1,20}", 0..5),
                props in proptest::collection::btree_map("[a-z._-]{1,10}", "[^\\p{Cc}]{0,30}", 0..4),
            ) -> AnnotationsBuilder {
                let mut b = Annotations::builder().limit_ids(limits).request_tags(tags);
                if let Some(v) = name { b = b.use_case_name(v) }
                if let Some(v) = id { b = b.use_case_id(v) }
                if let Some(v) = user { b = b.user_id(v) }
                if let Some(v) = account { b = b.account_name(format!("x{}x", v.trim())) }
                for (k, v) in props { b = b.request_property(k, v) }
                b
            }
        }

        proptest! {
            #[test]
            fn any_valid_annotations_round_trip_through_headers(b in valid()) {
                let a = b.build().unwrap();
                prop_assert_eq!(Annotations::from_headers(&a.to_headers()).unwrap(), a);
            }

            #[test]
            fn from_headers_never_panics(name in "\\PC{0,80}", ids in "\\PC{0,80}", json in "\\PC{0,80}") {
                let mut h = HeaderMap::new();
                for (k, v) in [("xproxy-usecase-name", &name), ("xproxy-limit-ids", &ids), ("xproxy-request-properties", &json)] {
                    if let Ok(v) = HeaderValue::from_str(v) { h.insert(k, v); }
                }
                let _ = Annotations::from_headers(&h);
            }
        }
    }
}
