//! Static bearer tokens: kube-apiserver's `--token-auth-file`, a CSV of
//! `token,user,uid,"group1,group2"`.

use skiff_machinery::user::UserInfo;

/// Why a token file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// A line has fewer than the three fields token, user and uid.
    #[error("line {line}: want token,user,uid[,\"group1,group2\"]")]
    Fields {
        /// The 1-based line number.
        line: usize,
    },
}

/// The tokens of a token file and the user each stands for. Blank lines and `#` comments are
/// skipped.
///
/// # Errors
/// When a line has fewer than three fields or an empty token or user.
pub fn parse(text: &str) -> Result<Vec<(String, UserInfo)>, TokenFileError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_csv(line);
        let [token, name, uid, rest @ ..] = fields.as_slice() else {
            return Err(TokenFileError::Fields { line: i + 1 });
        };
        if token.is_empty() || name.is_empty() {
            return Err(TokenFileError::Fields { line: i + 1 });
        }
        let groups = rest
            .first()
            .map(|g| {
                g.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let mut user = UserInfo::new(name.clone(), groups);
        user.uid.clone_from(uid);
        out.push((token.clone(), user));
    }
    Ok(out)
}

/// The fields of one CSV line: commas split, double quotes keep commas inside a field and
/// `""` is a quote.
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    fields.push(field);
    fields
}

#[cfg(test)]
mod tests {
    use skiff_machinery::user::AUTHENTICATED;

    use super::*;

    #[test]
    fn token_lines_give_user_uid_and_quoted_groups() {
        let tokens = parse(
            "# operators\nabc,alice,1001,\"dev,ops\"\n\ndef,bob,1002\nghi,carol,1003,viewers\n",
        )
        .unwrap();
        assert_eq!(tokens.len(), 3);
        let (token, alice) = &tokens[0];
        assert_eq!(token, "abc");
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.uid, "1001");
        assert_eq!(alice.groups, ["dev", "ops", AUTHENTICATED]);
        assert_eq!(tokens[1].1.groups, [AUTHENTICATED]);
        assert_eq!(tokens[2].1.groups, ["viewers", AUTHENTICATED]);
    }

    #[test]
    fn a_line_without_a_uid_is_refused_with_its_number() {
        let err = parse("abc,alice,1\nbad,line\n").unwrap_err();
        assert!(matches!(err, TokenFileError::Fields { line: 2 }));
    }
}
