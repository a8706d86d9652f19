//! The SMTP command parser (RFC 5321 §4.1), pure: bytes in, [`Command`] out.
//!
//! The session code in `session.rs` does all the I/O; this module never
//! touches a socket, so it can be unit-tested, property-tested (it must never
//! panic, whatever the bytes) and fuzzed (`fuzz/fuzz_targets/parse_command.rs`).
//!
//! The parser is deliberately a little lenient where real clients are sloppy
//! (a space after `MAIL FROM:`, lower-case verbs) and strict where leniency
//! has been a security problem (control characters in addresses).

/// Longest path (address with its angle brackets) we accept, RFC 5321 §4.5.3.1.3.
pub const MAX_PATH_LEN: usize = 256;

/// One parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `HELO domain`.
    Helo(String),
    /// `EHLO domain`.
    Ehlo(String),
    /// `MAIL FROM:<path> [params]`; `from` is empty for the null sender `<>`.
    Mail {
        /// The reverse path without angle brackets ("" for `<>`).
        from: String,
        /// ESMTP parameters (`SIZE=1234`, `BODY=8BITMIME`), keys upper-cased.
        params: Vec<(String, Option<String>)>,
    },
    /// `RCPT TO:<path> [params]`.
    Rcpt {
        /// The forward path without angle brackets.
        to: String,
        /// ESMTP parameters, keys upper-cased.
        params: Vec<(String, Option<String>)>,
    },
    /// `DATA`.
    Data,
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`: we never verify (252), but must answer.
    Vrfy(String),
    /// `HELP [string]`.
    Help,
    /// A known verb we do not implement (`EXPN`, `STARTTLS`, `TURN`, ...): 502.
    NotImplemented(String),
}

/// Why a command line could not be parsed; each maps to one SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Unknown verb: `500 5.5.2`.
    Unrecognized,
    /// Known verb, bad arguments: `501 5.5.4` with a reason.
    Syntax(&'static str),
}

impl ParseError {
    /// The reply line (without CRLF) to send for this error.
    pub fn reply(&self) -> String {
        match self {
            ParseError::Unrecognized => "500 5.5.2 Error: command not recognized".to_string(),
            ParseError::Syntax(why) => format!("501 5.5.4 Syntax error: {why}"),
        }
    }
}

/// Parses one command line. `line` may or may not end with CRLF / LF.
///
/// Never panics, whatever the input (property-tested and fuzzed).
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let line = strip_eol(line);
    // Commands are ASCII (we do not announce SMTPUTF8); anything else is a
    // syntax error rather than something to guess about.
    let Ok(line) = std::str::from_utf8(line) else {
        return Err(ParseError::Syntax("non-ASCII octets in command"));
    };
    if !line.is_ascii() {
        return Err(ParseError::Syntax("non-ASCII octets in command"));
    }
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    match verb.as_str() {
        "HELO" => domain_arg(rest).map(Command::Helo),
        "EHLO" => domain_arg(rest).map(Command::Ehlo),
        "MAIL" => {
            let rest = prefix_ci(rest, "FROM:")
                .ok_or(ParseError::Syntax("expected MAIL FROM:<address>"))?;
            let (from, params) = path_and_params(rest, true)?;
            Ok(Command::Mail { from, params })
        }
        "RCPT" => {
            let rest =
                prefix_ci(rest, "TO:").ok_or(ParseError::Syntax("expected RCPT TO:<address>"))?;
            let (to, params) = path_and_params(rest, false)?;
            Ok(Command::Rcpt { to, params })
        }
        "DATA" => no_arg(rest, Command::Data),
        "RSET" => no_arg(rest, Command::Rset),
        "QUIT" => no_arg(rest, Command::Quit),
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" => {
            let arg = rest.trim();
            if arg.is_empty() {
                Err(ParseError::Syntax("VRFY needs an argument"))
            } else {
                Ok(Command::Vrfy(arg.to_string()))
            }
        }
        "EXPN" | "STARTTLS" | "TURN" | "ETRN" | "ATRN" | "BDAT" | "AUTH" | "SEND" | "SOML"
        | "SAML" => Ok(Command::NotImplemented(verb)),
        _ => Err(ParseError::Unrecognized),
    }
}

/// Removes one trailing CRLF or LF.
fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Case-insensitive prefix match that tolerates spaces before the prefix.
fn prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let s = s.trim_start();
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

fn no_arg(rest: &str, cmd: Command) -> Result<Command, ParseError> {
    if rest.trim().is_empty() {
        Ok(cmd)
    } else {
        Err(ParseError::Syntax("this command takes no argument"))
    }
}

/// HELO/EHLO argument: a domain or an address literal; we only check shape.
fn domain_arg(rest: &str) -> Result<String, ParseError> {
    let arg = rest.trim();
    if arg.is_empty() {
        return Err(ParseError::Syntax("a domain name is required"));
    }
    if arg.len() > 255 || arg.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(ParseError::Syntax("invalid domain name"));
    }
    Ok(arg.to_string())
}

type Params = Vec<(String, Option<String>)>;

/// Parses `<path> [SP param]*` after `FROM:` / `TO:`.
fn path_and_params(rest: &str, null_ok: bool) -> Result<(String, Params), ParseError> {
    // Real clients send "MAIL FROM: <a@b>" although the grammar has no space.
    let rest = rest.trim_start();
    if !rest.starts_with('<') {
        return Err(ParseError::Syntax("address must be in angle brackets"));
    }
    let end = closing_bracket(rest).ok_or(ParseError::Syntax("unterminated address"))?;
    if end + 1 > MAX_PATH_LEN {
        return Err(ParseError::Syntax("address too long"));
    }
    let inner = &rest[1..end];
    let addr = strip_source_route(inner);
    if addr
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' && !inner.contains('"'))
    {
        return Err(ParseError::Syntax("invalid character in address"));
    }
    if addr.is_empty() {
        if !null_ok {
            return Err(ParseError::Syntax("empty recipient address"));
        }
    } else if !addr.contains('@') && !addr.eq_ignore_ascii_case("postmaster") {
        return Err(ParseError::Syntax("address must be local@domain"));
    }
    let mut params = Vec::new();
    let tail = &rest[end + 1..];
    if !tail.is_empty() && !tail.starts_with(' ') {
        return Err(ParseError::Syntax("garbage after address"));
    }
    for word in tail.split(' ').filter(|w| !w.is_empty()) {
        let (k, v) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (word, None),
        };
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ParseError::Syntax("invalid parameter"));
        }
        params.push((k.to_ascii_uppercase(), v));
    }
    Ok((addr.to_string(), params))
}

/// Index of the `>` that closes the path starting at `s[0] == '<'`, skipping
/// a `>` inside a quoted local part.
fn closing_bracket(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Drops an obsolete source route (`@a,@b:user@c` → `user@c`), RFC 5321 §4.1.2.
fn strip_source_route(inner: &str) -> &str {
    if inner.starts_with('@') {
        match inner.find(':') {
            Some(i) => &inner[i + 1..],
            None => inner,
        }
    } else {
        inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs() {
        assert_eq!(
            parse_command(b"EHLO example.org\r\n"),
            Ok(Command::Ehlo("example.org".into()))
        );
        assert_eq!(parse_command(b"helo x\n"), Ok(Command::Helo("x".into())));
        assert_eq!(parse_command(b"DATA\r\n"), Ok(Command::Data));
        assert_eq!(parse_command(b"quit"), Ok(Command::Quit));
        assert_eq!(parse_command(b"NOOP whatever"), Ok(Command::Noop));
        assert_eq!(parse_command(b"VRFY bob"), Ok(Command::Vrfy("bob".into())));
        assert_eq!(
            parse_command(b"EXPN list"),
            Ok(Command::NotImplemented("EXPN".into()))
        );
        assert_eq!(parse_command(b"FOO"), Err(ParseError::Unrecognized));
        assert_eq!(parse_command(b""), Err(ParseError::Unrecognized));
    }

    #[test]
    fn mail_and_rcpt() {
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b.c> SIZE=100 BODY=8BITMIME\r\n"),
            Ok(Command::Mail {
                from: "a@b.c".into(),
                params: vec![
                    ("SIZE".into(), Some("100".into())),
                    ("BODY".into(), Some("8BITMIME".into()))
                ],
            })
        );
        assert_eq!(
            parse_command(b"mail from: <>"),
            Ok(Command::Mail {
                from: String::new(),
                params: vec![]
            })
        );
        assert_eq!(
            parse_command(b"RCPT TO:<@relay.example:u@d.example>"),
            Ok(Command::Rcpt {
                to: "u@d.example".into(),
                params: vec![]
            })
        );
        assert_eq!(
            parse_command(b"RCPT TO:<\"odd>name\"@d>"),
            Ok(Command::Rcpt {
                to: "\"odd>name\"@d".into(),
                params: vec![]
            })
        );
        assert!(matches!(
            parse_command(b"RCPT TO:<>"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL FROM:a@b"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL TO:<a@b>"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL FROM:<a@b"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"MAIL FROM:<a\x01@b>"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"RCPT TO:<a@b>x"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command(b"DATA now"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse_command("MAIL FROM:<é@b>".as_bytes()),
            Err(ParseError::Syntax(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_command(&bytes);
        }

        #[test]
        fn never_panics_on_likely_prefixes(
            verb in proptest::sample::select(vec!["MAIL FROM:", "RCPT TO:", "EHLO ", "VRFY ", "mail from: <"]),
            tail in "\\PC{0,300}",
        ) {
            let line = format!("{verb}{tail}");
            let _ = parse_command(line.as_bytes());
        }
    }
}
