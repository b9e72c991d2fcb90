//! The match rules QEMU adds and removes: kept only to tell which
//! helpers QEMU still holds a proxy for. Nothing is ever sent to QEMU
//! because of a rule.

/// Most rules one QEMU connection may hold at once (QEMU adds three per
/// helper and three of its own).
pub(super) const MAX_RULES: usize = 4096;

/// The names a match rule is about: the values of its `sender` and `arg0`
/// keys (a GDBus proxy's rules name its peer in one or the other).
///
/// A rule is `key='value'` pairs separated by commas; a value may hold
/// commas, and `'\''` stands for a quote. What does not parse names
/// nothing.
pub(super) fn names(rule: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = rule;
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim_start_matches(',').trim();
        rest = &rest[eq + 1..];
        let (value, after) = match value(rest) {
            Some(parsed) => parsed,
            None => break,
        };
        if key == "sender" || key == "arg0" {
            found.push(value);
        }
        rest = after;
    }
    found
}

/// One value at the start of `s` (quoted, or bare up to the next comma),
/// and what follows it.
fn value(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices().peekable();
    let mut quoted = false;
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' => quoted = !quoted,
            '\\' if !quoted && s[i + 1..].starts_with('\'') => {
                out.push('\'');
                chars.next();
            }
            ',' if !quoted => return Some((out, &s[i + 1..])),
            c => out.push(c),
        }
    }
    (!quoted).then_some((out, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_qemu_7_2_adds_name_their_peer() {
        let properties = "type='signal',sender=':1.1',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',path='/org/qemu/VMState1',arg0='org.qemu.VMState1'";
        assert_eq!(names(properties), [":1.1", "org.qemu.VMState1"]);
        let owner = "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',path='/org/freedesktop/DBus',arg0=':1.2'";
        assert_eq!(names(owner), ["org.freedesktop.DBus", ":1.2"]);
    }

    #[test]
    fn quoted_commas_and_escaped_quotes_stay_in_the_value() {
        assert_eq!(names("arg0='a,b',sender=x"), ["a,b", "x"]);
        assert_eq!(names(r"arg0='it'\''s'"), ["it's"]);
    }

    #[test]
    fn what_does_not_parse_names_nothing_past_it() {
        assert!(names("").is_empty());
        assert!(names("garbage").is_empty());
        assert!(names("sender='unterminated").is_empty());
        assert_eq!(names("type='signal',sender"), Vec::<String>::new());
    }
}
