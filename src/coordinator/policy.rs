//! Which helpers take part, as plain functions over data: no sockets here.

use std::collections::HashSet;

use super::HelperSpec;
use crate::error::Error;
use crate::stream::{self, Record};

/// Checks a helper list: not empty, valid Ids, no Id or socket twice.
///
/// # Errors
///
/// [`Error::Config`] naming the first problem.
pub(crate) fn check_helpers(helpers: &[HelperSpec]) -> Result<(), Error> {
    if helpers.is_empty() {
        return Err(Error::Config {
            reason: "no helpers configured".to_string(),
        });
    }
    let mut ids = HashSet::new();
    let mut sockets = HashSet::new();
    for h in helpers {
        stream::validate_id(&h.id).map_err(|e| Error::Config {
            reason: format!("helper Id {:?}: {e}", h.id),
        })?;
        if !ids.insert(h.id.as_str()) {
            return Err(Error::Config {
                reason: format!("helper {:?} is listed twice", h.id),
            });
        }
        if !sockets.insert(h.socket.as_path()) {
            return Err(Error::Config {
                reason: format!(
                    "socket {} is given to more than one helper",
                    h.socket.display()
                ),
            });
        }
    }
    Ok(())
}

/// Which helper gets which record on load.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LoadPlan {
    /// `(helper index, record index)` pairs.
    pub targets: Vec<(usize, usize)>,
    /// Optional helpers with no state in the stream.
    pub absent_optional: Vec<usize>,
}

/// Matches a verified stream's records to the configured helpers.
///
/// # Errors
///
/// Every Id in the stream that is not configured
/// ([`Error::UnknownInStream`]), every required helper with no record
/// ([`Error::MissingInStream`]), and a duplicate Id (the stream decoders
/// already reject those), folded into one error.
pub(crate) fn plan_load(helpers: &[HelperSpec], records: &[Record]) -> Result<LoadPlan, Error> {
    let mut errors = Vec::new();
    let mut plan = LoadPlan::default();
    let mut seen = HashSet::new();
    for (ri, record) in records.iter().enumerate() {
        if !seen.insert(record.id.as_str()) {
            errors.push(Error::Stream(stream::Error::DuplicateId {
                id: record.id.clone(),
            }));
            continue;
        }
        match helpers.iter().position(|h| h.id == record.id) {
            Some(hi) => plan.targets.push((hi, ri)),
            None => errors.push(Error::UnknownInStream {
                id: record.id.clone(),
            }),
        }
    }
    for (hi, h) in helpers.iter().enumerate() {
        if !seen.contains(h.id.as_str()) {
            if h.required {
                errors.push(Error::MissingInStream { id: h.id.clone() });
            } else {
                plan.absent_optional.push(hi);
            }
        }
    }
    match Error::from_many(errors) {
        Some(e) => Err(e),
        None => {
            plan.targets.sort_unstable();
            Ok(plan)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, required: bool) -> HelperSpec {
        HelperSpec {
            id: id.into(),
            socket: format!("/tmp/{id}.sock").into(),
            required,
        }
    }

    fn rec(id: &str) -> Record {
        Record {
            id: id.into(),
            data: vec![1],
        }
    }

    #[test]
    fn matches_records_to_helpers() {
        let helpers = [spec("a", true), spec("b", true)];
        let plan = plan_load(&helpers, &[rec("b"), rec("a")]).unwrap();
        assert_eq!(plan.targets, vec![(0, 1), (1, 0)]);
        assert!(plan.absent_optional.is_empty());
    }

    #[test]
    fn missing_required_is_an_error() {
        let helpers = [spec("a", true), spec("b", true)];
        let err = plan_load(&helpers, &[rec("a")]).unwrap_err();
        assert!(
            matches!(&err, Error::MissingInStream { id } if id == "b"),
            "{err}"
        );
    }

    #[test]
    fn missing_optional_is_reported() {
        let helpers = [spec("a", true), spec("b", false)];
        let plan = plan_load(&helpers, &[rec("a")]).unwrap();
        assert_eq!(plan.absent_optional, vec![1]);
    }

    #[test]
    fn unknown_id_is_an_error() {
        let helpers = [spec("a", true)];
        let err = plan_load(&helpers, &[rec("a"), rec("zz")]).unwrap_err();
        assert!(
            matches!(&err, Error::UnknownInStream { id } if id == "zz"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_id_is_an_error() {
        let helpers = [spec("a", true)];
        let err = plan_load(&helpers, &[rec("a"), rec("a")]).unwrap_err();
        assert!(err.to_string().contains("state stream rejected"), "{err}");
        assert_eq!(err.helper_id(), Some("a"));
    }

    #[test]
    fn all_problems_are_reported_together() {
        let helpers = [spec("a", true), spec("b", true)];
        let err = plan_load(&helpers, &[rec("x")]).unwrap_err();
        match err {
            Error::Several { errors } => assert_eq!(errors.len(), 3),
            other => panic!("expected several errors, got {other}"),
        }
    }

    #[test]
    fn helper_list_checks() {
        assert!(check_helpers(&[]).is_err());
        assert!(check_helpers(&[spec("a", true), spec("a", true)]).is_err());
        assert!(check_helpers(&[spec("", true)]).is_err());
        let mut b = spec("b", true);
        b.socket = "/tmp/a.sock".into();
        assert!(check_helpers(&[spec("a", true), b]).is_err());
        assert!(check_helpers(&[spec("a", true), spec("b", false)]).is_ok());
    }
}
