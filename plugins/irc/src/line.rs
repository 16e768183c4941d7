//! IRC line parsing and formatting.

/// One parsed IRC message.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    pub prefix: Option<String>,
    pub command: String,
    pub params: Vec<String>,
}

impl Message {
    /// The nick of the prefix `nick!user@host`.
    pub fn nick(&self) -> Option<String> {
        self.prefix
            .as_ref()
            .map(|p| p.split('!').next().unwrap_or(p).to_string())
    }
}

pub fn parse(line: &str) -> Option<Message> {
    let mut rest = line.trim_end_matches(['\r', '\n']);
    if rest.starts_with('@') {
        // IRCv3 tags: skip.
        rest = rest.split_once(' ')?.1;
    }
    let prefix = if let Some(r) = rest.strip_prefix(':') {
        let (p, r) = r.split_once(' ')?;
        rest = r;
        Some(p.to_string())
    } else {
        None
    };
    let (command, mut rest) = match rest.split_once(' ') {
        Some((c, r)) => (c.to_string(), r),
        None => (rest.to_string(), ""),
    };
    let mut params = Vec::new();
    while !rest.is_empty() {
        if let Some(trailing) = rest.strip_prefix(':') {
            params.push(trailing.to_string());
            break;
        }
        match rest.split_once(' ') {
            Some((p, r)) => {
                if !p.is_empty() {
                    params.push(p.to_string());
                }
                rest = r;
            }
            None => {
                params.push(rest.to_string());
                break;
            }
        }
    }
    if command.is_empty() {
        return None;
    }
    Some(Message {
        prefix,
        command: command.to_ascii_uppercase(),
        params,
    })
}

/// `PRIVMSG` lines for `text`: one per line of text, each split so the line
/// the server relays (with our `:nick!user@host ` prefix) stays within 512 bytes.
///
/// A line of text ends at `\n`, `\r\n` or a lone `\r`: servers such as
/// ngircd and InspIRCd end a command at a lone `\r`, so one left inside a
/// PRIVMSG would run the rest of the text as a command of the bot's own
/// (`hi\rJOIN #x`). NUL, which IRC forbids and servers cut lines at, is
/// dropped.
pub fn privmsg_lines(target: &str, text: &str, nick: &str) -> Vec<String> {
    // Room for ":nick!~user@host " (host up to 63) the server prepends.
    let overhead = "PRIVMSG  :\r\n".len() + target.len() + nick.len() * 2 + 66;
    let budget = 512usize.saturating_sub(overhead).max(16);
    let mut out = Vec::new();
    for l in text.split(['\r', '\n']) {
        let l: std::borrow::Cow<str> = if l.contains('\0') {
            l.replace('\0', "").into()
        } else {
            l.into()
        };
        if l.is_empty() {
            continue;
        }
        let mut rest = &*l;
        while !rest.is_empty() {
            let mut cut = rest.len().min(budget);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            if cut < rest.len() {
                if let Some(space) = rest[..cut].rfind(' ').filter(|i| *i > 0) {
                    cut = space;
                }
            }
            out.push(format!("PRIVMSG {target} :{}", &rest[..cut]));
            rest = rest[cut..].trim_start_matches(' ');
        }
    }
    out
}

/// `AUTHENTICATE` lines for a base64 payload: 400-byte pieces, and a `+`
/// after a last piece of exactly 400 bytes (or for an empty payload).
pub fn authenticate_lines(payload: &str) -> Vec<String> {
    let mut out: Vec<String> = payload
        .as_bytes()
        .chunks(400)
        .map(|c| format!("AUTHENTICATE {}", String::from_utf8_lossy(c)))
        .collect();
    if payload.len().is_multiple_of(400) {
        out.push("AUTHENTICATE +".into());
    }
    out
}

pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages() {
        let m = parse(":ann!a@h PRIVMSG #room :hello there").unwrap();
        assert_eq!(m.nick().as_deref(), Some("ann"));
        assert_eq!(m.command, "PRIVMSG");
        assert_eq!(m.params, vec!["#room", "hello there"]);
        let p = parse("PING :irc.test").unwrap();
        assert_eq!(
            (p.command.as_str(), p.params[0].as_str()),
            ("PING", "irc.test")
        );
        let n = parse(":irc.test 433 * bot :Nickname already in use").unwrap();
        assert_eq!(n.command, "433");
    }

    #[test]
    fn a_lone_cr_ends_a_line_and_nul_is_dropped() {
        assert_eq!(
            privmsg_lines("#c", "hi\rJOIN #evil\r\nnext\n\rn\0ul\0", "bot"),
            [
                "PRIVMSG #c :hi",
                "PRIVMSG #c :JOIN #evil",
                "PRIVMSG #c :next",
                "PRIVMSG #c :nul"
            ]
        );
        assert!(privmsg_lines("#c", "\0\r\0", "bot").is_empty());
    }

    #[test]
    fn splits_lines_and_long_text() {
        let lines = privmsg_lines("#c", "one\ntwo", "bot");
        assert_eq!(lines, vec!["PRIVMSG #c :one", "PRIVMSG #c :two"]);
        let long = "word ".repeat(300);
        let long = long.trim_end();
        let lines = privmsg_lines("#c", long, "bot");
        assert!(lines.len() >= 3);
        for l in &lines {
            assert!(l.len() + 2 + 3 * 2 + 66 <= 512, "{}", l.len());
        }
        let joined: Vec<&str> = lines
            .iter()
            .map(|l| l.trim_start_matches("PRIVMSG #c :"))
            .collect();
        assert_eq!(joined.join(" "), long);
    }

    #[test]
    fn authenticate_splits_at_400_bytes() {
        assert_eq!(authenticate_lines("abc"), vec!["AUTHENTICATE abc"]);
        let p = "x".repeat(400);
        assert_eq!(
            authenticate_lines(&p),
            vec![format!("AUTHENTICATE {p}"), "AUTHENTICATE +".into()]
        );
        let l = authenticate_lines(&"y".repeat(401));
        assert_eq!(l.len(), 2);
        assert_eq!(l[1], "AUTHENTICATE y");
    }

    #[test]
    fn base64_plain() {
        assert_eq!(base64(b"bot\0bot\0pw"), "Ym90AGJvdABwdw==");
    }
}
