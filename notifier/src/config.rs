//! The function's settings, read once from its environment at cold start.
//!
//! | variable | meaning |
//! |---|---|
//! | `TOPIC_ARN` | required: the SNS topic to publish to |
//! | `DB_LABEL` | the `[label]` of subjects; default: the server's `cluster_name`, else its host name |
//! | `SKIP_USERS` | comma-separated role names whose logins are not published |
//! | `ONLY_FAILURES` | `true`: publish failed logins only (plus tests and summaries) |

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub topic_arn: String,
    pub label: Option<String>,
    pub filters: Filters,
}

/// What the function drops instead of publishing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filters {
    pub skip_users: Vec<String>,
    pub only_failures: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("TOPIC_ARN is not set: it must name the SNS topic (arn:aws:sns:…)")]
    MissingTopic,
    #[error("TOPIC_ARN {0:?} is not an ARN (arn:aws:sns:region:account:name)")]
    BadTopic(String),
    #[error("ONLY_FAILURES {0:?} is not a boolean (true/false, 1/0, yes/no, on/off)")]
    BadBool(String),
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// `lookup(name)` gives the variable's value, if set.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let value = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let topic_arn = value("TOPIC_ARN").ok_or(ConfigError::MissingTopic)?;
        if !topic_arn.starts_with("arn:") {
            return Err(ConfigError::BadTopic(topic_arn));
        }
        let skip_users = value("SKIP_USERS")
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let only_failures = match value("ONLY_FAILURES") {
            None => false,
            Some(flag) => parse_bool(&flag).ok_or(ConfigError::BadBool(flag))?,
        };
        Ok(Config {
            topic_arn,
            label: value("DB_LABEL"),
            filters: Filters {
                skip_users,
                only_failures,
            },
        })
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:logins";

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults() {
        let expected = Config {
            topic_arn: TOPIC.into(),
            label: None,
            filters: Filters::default(),
        };
        assert_eq!(config(&[("TOPIC_ARN", TOPIC)]), Ok(expected));
    }

    #[test]
    fn every_variable() {
        let got = config(&[
            ("TOPIC_ARN", TOPIC),
            ("DB_LABEL", " db-prod "),
            ("SKIP_USERS", " rdsadmin, ,monitoring,"),
            ("ONLY_FAILURES", "TRUE"),
        ]);
        let filters = Filters {
            skip_users: vec!["rdsadmin".into(), "monitoring".into()],
            only_failures: true,
        };
        assert_eq!(
            got,
            Ok(Config {
                topic_arn: TOPIC.into(),
                label: Some("db-prod".into()),
                filters
            })
        );
        assert_eq!(
            config(&[("TOPIC_ARN", TOPIC), ("ONLY_FAILURES", "off")])
                .map(|c| c.filters.only_failures),
            Ok(false)
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(config(&[]), Err(ConfigError::MissingTopic));
        assert_eq!(
            config(&[("TOPIC_ARN", "  ")]),
            Err(ConfigError::MissingTopic)
        );
        assert_eq!(
            config(&[("TOPIC_ARN", "logins")]),
            Err(ConfigError::BadTopic("logins".into()))
        );
        assert_eq!(
            config(&[("TOPIC_ARN", TOPIC), ("ONLY_FAILURES", "maybe")]),
            Err(ConfigError::BadBool("maybe".into()))
        );
    }
}
