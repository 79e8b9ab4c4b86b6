//! HTML forms in, the API's JSON requests out. Values are passed on as typed (a number that does
//! not parse is sent as the text it is), so the API's own validation answers with its own words;
//! the console never decides what is valid.

use crate::http::HttpRequest;
use serde_json::{Map, Value, json};

/// How many mapping rows the create-destination form offers.
pub const MAPPING_ROWS: usize = 3;

/// A submitted form (`application/x-www-form-urlencoded`), in order, repeated names kept.
#[derive(Clone, Debug, Default)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn parse(req: &HttpRequest) -> Self {
        if req.method != "POST" {
            return Self::default();
        }
        Form(
            url::form_urlencoded::parse(&req.body)
                .into_owned()
                .collect(),
        )
    }

    /// The first value of `name`, trimmed; `None` when absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
    }

    /// The first value of `name`, `""` when absent.
    pub fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or("").to_string()
    }

    /// Every value of `name` (checkboxes).
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v == "on" || v == "true")
    }
}

/// A typed number as a JSON number, anything else as the text typed.
pub fn number_or_text(v: &str) -> Value {
    v.parse::<i64>()
        .map(Value::from)
        .unwrap_or_else(|_| json!(v))
}

/// `PUT /segments/{id}`'s body.
pub fn segment_body(f: &Form) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), json!(f.text("name")));
    if let Some(d) = f.get("description").filter(|d| !d.is_empty()) {
        o.insert("description".into(), json!(d));
    }
    o.insert(
        "dataExportControls".into(),
        json!(f.all("dataExportControls")),
    );
    Value::Object(o)
}

/// Fees from a cpm and a currency field: `[]` when the cpm is empty.
pub fn fees(cpm: &str, currency: &str) -> Value {
    if cpm.is_empty() {
        return json!([]);
    }
    json!([{"cpmCents": number_or_text(cpm), "currency": currency.to_ascii_uppercase()}])
}

/// One mapping of the form's row `i` (`mappings[i].segmentId`, `.cpmCents`, `.currency`,
/// `.audienceId`), `None` when its segment is empty.
pub fn mapping(f: &Form, prefix: &str) -> Option<Value> {
    let seg = f.text(&format!("{prefix}.segmentId"));
    if seg.is_empty() {
        return None;
    }
    let mut m = Map::new();
    m.insert("segmentId".into(), json!(seg));
    let cpm = f.text(&format!("{prefix}.cpmCents"));
    if !cpm.is_empty() {
        m.insert(
            "audienceFees".into(),
            fees(&cpm, &f.text(&format!("{prefix}.currency"))),
        );
    }
    let aud = f.text(&format!("{prefix}.audienceId"));
    if !aud.is_empty() {
        m.insert("audienceId".into(), json!(aud));
    }
    Some(Value::Object(m))
}

/// `POST /destinations`' body.
pub fn destination_body(f: &Form) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), json!(f.text("name")));
    if let Some(d) = f.get("description").filter(|d| !d.is_empty()) {
        o.insert("description".into(), json!(d));
    }
    o.insert("accountId".into(), json!(f.text("accountId")));
    o.insert("dataExportLabels".into(), json!(f.all("dataExportLabels")));
    let countries: Vec<String> = f
        .text("dataSourceCountry")
        .split([',', ' '])
        .filter(|c| !c.is_empty())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if !countries.is_empty() {
        o.insert("dataSourceCountry".into(), json!(countries));
    }
    if let Some(t) = f.get("ttlSeconds").filter(|t| !t.is_empty()) {
        o.insert("ttlSeconds".into(), number_or_text(t));
    }
    let mappings: Vec<Value> = (0..MAPPING_ROWS)
        .filter_map(|i| mapping(f, &format!("mappings[{i}]")))
        .collect();
    o.insert("mappings".into(), json!(mappings));
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &str) -> Form {
        Form::parse(&HttpRequest::new("POST", "/").with_body(body.as_bytes().to_vec()))
    }

    #[test]
    fn destinations_are_built_as_the_api_expects() {
        let f = form(
            "name=Shop&accountId=12&dataExportLabels=PII_COMBINATION&dataExportLabels=&\
             dataSourceCountry=us%2C+gb&ttlSeconds=abc&mappings%5B0%5D.segmentId=s1&\
             mappings%5B0%5D.cpmCents=150&mappings%5B0%5D.currency=usd&mappings%5B1%5D.segmentId=&\
             mappings%5B2%5D.segmentId=s2&mappings%5B2%5D.audienceId=42",
        );
        let b = destination_body(&f);
        assert_eq!(b["dataExportLabels"], json!(["PII_COMBINATION"]));
        assert_eq!(b["dataSourceCountry"], json!(["US", "GB"]));
        // Not a number: passed on as typed, so the API says what is wrong.
        assert_eq!(b["ttlSeconds"], json!("abc"));
        assert_eq!(
            b["mappings"],
            json!([
                {"segmentId": "s1", "audienceFees": [{"cpmCents": 150, "currency": "USD"}]},
                {"segmentId": "s2", "audienceId": "42"}
            ])
        );
        assert!(b.get("description").is_none());
    }

    #[test]
    fn segments_keep_every_checked_control() {
        let f = form(
            "name=A&dataExportControls=NO_PII_COMBINATION&dataExportControls=NO_OFFSITE_AD_TARGETING&csrf=x",
        );
        let b = segment_body(&f);
        assert_eq!(
            b["dataExportControls"],
            json!(["NO_PII_COMBINATION", "NO_OFFSITE_AD_TARGETING"])
        );
        assert_eq!(f.get("csrf"), Some("x"));
        assert_eq!(fees("", "USD"), json!([]));
    }
}
