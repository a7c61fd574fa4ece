//! Parsing and validation of setting values. Pure Rust, unit-tested; `guc.rs` calls these
//! from its check hooks so a bad value is refused with a clear message.

/// Parses a name list such as `skip_users`: comma-separated; surrounding blanks ignored;
/// a name may be double-quoted to contain commas, blanks or quotes (`""` inside quotes is
/// one `"`). Names are compared exactly (case-sensitive), like pg_hba.conf.
pub fn parse_name_list(raw: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut chars = raw.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            if !names.is_empty() {
                return Err("the list ends with a comma".into());
            }
            return Ok(names);
        }
        let mut name = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted name \"{name}")),
                    Some('"') if chars.next_if_eq(&'"').is_some() => name.push('"'),
                    Some('"') => break,
                    Some(c) => name.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|&c| c != ',') {
                if c == '"' {
                    return Err(format!(
                        "a quote inside an unquoted name ({name}\"...); quote the whole name"
                    ));
                }
                name.push(c);
            }
            name.truncate(name.trim_end().len());
        }
        if name.is_empty() {
            return Err("empty name in the list".into());
        }
        names.push(name);
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.next() {
            None => return Ok(names),
            Some(',') => {}
            Some(c) => {
                return Err(format!(
                    "expected a comma after \"{}\", found '{c}'",
                    names.last().map_or("", |n| n.as_str())
                ))
            }
        }
    }
}

/// True when `name` (raw bytes from PostgreSQL) is in the list (raw bytes of the
/// setting). The list was validated by the check hook; an unparsable one matches nothing.
#[cfg_attr(not(test), link_section = ".text.hot.login_notification")]
pub fn list_contains(raw: &[u8], name: &[u8]) -> bool {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return false;
    }
    std::str::from_utf8(raw)
        .ok()
        .and_then(|raw| parse_name_list(raw).ok())
        .is_some_and(|names| names.iter().any(|n| n.as_bytes() == name))
}

fn is_function_name(s: &str) -> bool {
    (1..=140).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_qualifier(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && (s == "$LATEST"
            || s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// Accepts what Lambda's Invoke accepts as FunctionName: `name`, `name:qualifier`,
/// `account:function:name[:qualifier]` or the full ARN
/// `arn:partition:lambda:region:account:function:name[:qualifier]`.
pub fn check_function_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    let parts: Vec<&str> = s.split(':').collect();
    let (name, qualifier) = match parts.as_slice() {
        [name] => (*name, None),
        [name, q] => (*name, Some(*q)),
        [account, "function", name] => {
            check_account(account)?;
            (*name, None)
        }
        [account, "function", name, q] => {
            check_account(account)?;
            (*name, Some(*q))
        }
        ["arn", partition, "lambda", region, account, "function", name, rest @ ..]
            if rest.len() <= 1 =>
        {
            if !partition.starts_with("aws") {
                return Err(format!("unknown ARN partition \"{partition}\""));
            }
            check_region(region)?;
            check_account(account)?;
            (*name, rest.first().copied())
        }
        _ => {
            return Err("expected a function name, name:qualifier, a partial ARN \
                 (123456789012:function:name) or a full ARN \
                 (arn:aws:lambda:region:123456789012:function:name)"
                .into())
        }
    };
    if !is_function_name(name) {
        return Err(format!(
            "\"{name}\" is not a valid function name (letters, digits, - and _ only)"
        ));
    }
    match qualifier {
        Some(q) if !is_qualifier(q) => Err(format!("\"{q}\" is not a valid version or alias")),
        _ => Ok(()),
    }
}

fn check_account(account: &str) -> Result<(), String> {
    if account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("\"{account}\" is not a 12-digit AWS account id"))
    }
}

/// The region inside a full ARN, if the function name is one.
pub fn region_from_arn(function_name: &str) -> Option<&str> {
    let mut parts = function_name.split(':');
    (parts.next() == Some("arn"))
        .then(|| parts.nth(2))
        .flatten()
        .filter(|r| !r.is_empty())
}

/// Region names such as `us-east-1`, `eu-central-2`, `us-gov-west-1`.
pub fn check_region(s: &str) -> Result<(), String> {
    let ok = s.is_empty()
        || (s.len() <= 32
            && s.split('-').count() >= 3
            && s.split('-').all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
            && s.rsplit('-')
                .next()
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{s}\" is not an AWS region name (for example us-east-1)"
        ))
    }
}

/// An endpoint override: `http://` or `https://`, a host, an optional port, an optional path.
pub fn check_endpoint_url(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("\"{s}\" must start with http:// or https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let bad = |why: &str| Err(format!("\"{s}\" is not a valid URL: {why}"));
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains blanks or control characters");
    }
    if authority.is_empty() {
        return bad("no host");
    }
    if authority.contains('@') {
        return bad("credentials do not belong in the URL");
    }
    let host_port = authority;
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return bad("unclosed [ in the host"),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
    {
        return bad("bad host name");
    }
    match port {
        Some(p) if p.parse::<u16>().map_or(true, |p| p == 0) => bad("bad port"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_lists() {
        assert_eq!(parse_name_list("").unwrap(), Vec::<String>::new());
        assert_eq!(parse_name_list("  ").unwrap(), Vec::<String>::new());
        assert_eq!(parse_name_list("rdsadmin").unwrap(), ["rdsadmin"]);
        assert_eq!(
            parse_name_list(" a , B ,c").unwrap(),
            ["a", "B", "c"],
            "blanks around names are ignored, case is kept"
        );
        assert_eq!(
            parse_name_list(r#""with, comma", "  spaced ", "say ""hi""", plain name"#).unwrap(),
            ["with, comma", "  spaced ", "say \"hi\"", "plain name"]
        );
        assert_eq!(parse_name_list("日本, é").unwrap(), ["日本", "é"]);
        for bad in ["a,,b", "a,", ",a", "\"open", "a\"b", "\"x\" y", "\"\""] {
            assert!(parse_name_list(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn list_membership_is_exact() {
        assert!(list_contains(b"alice, bob", b"bob"));
        assert!(!list_contains(b"alice, bob", b"Bob"));
        assert!(!list_contains(b"alice", b"alic"));
        assert!(list_contains(b"\"o'brien \\\"", b"o'brien \\"));
        assert!(!list_contains(b"", b""));
        assert!(!list_contains(b"  ", b""));
    }

    #[test]
    fn function_names() {
        for ok in [
            "",
            "login-notifier",
            "my_function:prod",
            "my_function:$LATEST",
            "my_function:7",
            "123456789012:function:notifier",
            "123456789012:function:notifier:live",
            "arn:aws:lambda:us-east-1:123456789012:function:notifier",
            "arn:aws:lambda:eu-west-3:123456789012:function:notifier:prod",
            "arn:aws-cn:lambda:cn-north-1:123456789012:function:n",
        ] {
            assert_eq!(check_function_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "has space",
            "semi;colon",
            "a:b:c",
            "12345:function:x",
            "arn:aws:lambda:nowhere:123456789012:function:x",
            "arn:aws:s3:us-east-1:123456789012:function:x",
            "arn:aws:lambda:us-east-1:123456789012:function:x:y:z",
            "f:bad qualifier",
        ] {
            assert!(check_function_name(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn regions() {
        assert_eq!(
            region_from_arn("arn:aws:lambda:eu-west-1:123456789012:function:f"),
            Some("eu-west-1")
        );
        assert_eq!(region_from_arn("f"), None);
        assert_eq!(region_from_arn("123456789012:function:f"), None);
        for ok in ["", "us-east-1", "us-gov-west-1", "ap-southeast-4"] {
            assert_eq!(check_region(ok), Ok(()), "{ok}");
        }
        for bad in ["US-EAST-1", "useast1", "us-east", "us east-1", "us--1"] {
            assert!(check_region(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_urls() {
        for ok in [
            "",
            "http://127.0.0.1:4566",
            "https://lambda.us-east-1.amazonaws.com",
            "https://vpce-1a2b.lambda.us-east-1.vpce.amazonaws.com/",
            "http://[::1]:9000",
            "http://localhost",
        ] {
            assert_eq!(check_endpoint_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "not a url",
            "ftp://x",
            "http://",
            "http://:80",
            "http://host:0",
            "http://host:99999",
            "http://user:secret@host",
            "http://ho st",
            "http://[::1",
        ] {
            assert!(check_endpoint_url(bad).is_err(), "{bad}");
        }
    }
}
