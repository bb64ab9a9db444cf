//! JSON has no NaN: serde_json writes a NaN as `null`. A figure the lab could not measure is NaN
//! (the report says so rather than inventing a number), so where one can be NaN, these read
//! `null` back as NaN: `#[serde(deserialize_with = "lab_protocol::nan::f64")]`.
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// `null` as NaN.
pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A list of figures, `null` as NaN.
pub fn vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    Ok(Vec::<Option<f64>>::deserialize(d)?.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

/// `name -> key -> figure`, `null` as NaN.
pub fn table<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, BTreeMap<String, f64>>, D::Error> {
    let raw = BTreeMap::<String, BTreeMap<String, Option<f64>>>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(name, keys)| (name, keys.into_iter().map(|(k, v)| (k, v.unwrap_or(f64::NAN))).collect()))
        .collect())
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Figures {
        #[serde(deserialize_with = "super::f64")]
        one: f64,
        #[serde(deserialize_with = "super::vec")]
        list: Vec<f64>,
        #[serde(deserialize_with = "super::table")]
        table: std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
    }

    #[test]
    fn nan_survives_a_round_trip_through_json() {
        let f = Figures {
            one: f64::NAN,
            list: vec![1.0, f64::NAN],
            table: [("a".to_owned(), [("p50".to_owned(), f64::NAN)].into())].into(),
        };
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, r#"{"one":null,"list":[1.0,null],"table":{"a":{"p50":null}}}"#);
        let back: Figures = serde_json::from_str(&json).unwrap();
        assert!(
            back.one.is_nan()
                && back.list[0] == 1.0
                && back.list[1].is_nan()
                && back.table["a"]["p50"].is_nan()
        );
    }
}
