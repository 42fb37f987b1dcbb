//! Checking a trail offline (`cofferctl audit verify`): every link, every
//! `seq`, and optionally an [`Anchor`] known from outside the files, so
//! records cut off the start or the end are found too.

use super::chain::{GENESIS, HMAC_CHAIN, Link};

/// Where a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {problem}")]
pub struct BrokenChain {
    /// The file holding the first broken record.
    pub file: String,
    /// Its line number (1-based).
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

/// What an intact chain holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Records checked.
    pub records: u64,
    /// The `seq` of the first record.
    pub first_seq: Option<u64>,
    /// The hash of the last record: compare with a copy kept elsewhere to
    /// detect truncation at the end.
    pub last_hash: String,
    /// Whether an [`Anchor`] was given and the chain passed through it.
    pub anchored: bool,
}

impl ChainSummary {
    /// The anchor for the next check of the same trail: the seq the next
    /// record will have and the hash it will name.
    pub fn next_anchor(&self) -> Anchor {
        Anchor {
            next_seq: self.first_seq.map_or(0, |first| first + self.records),
            last_hash: self.last_hash.clone(),
        }
    }
}

/// A point of the chain known from outside the files, so that records cut
/// off the start (or the end) of a trail are found: the `audit chain head`
/// the broker logs when it opens the trail, every `head_interval` and at
/// shutdown (`next_seq`, `last_hash`), or the anchor a previous
/// `cofferctl audit verify` printed. Written `NEXT_SEQ:LAST_HASH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The seq of the record written after the anchor point.
    pub next_seq: u64,
    /// The hash that record names as `prev`.
    pub last_hash: String,
}

impl std::str::FromStr for Anchor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (seq, hash) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?} is not NEXT_SEQ:LAST_HASH"))?;
        let next_seq = seq
            .parse()
            .map_err(|_| format!("{seq:?} is not a record number"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{hash:?} is not a 64-digit hex hash"));
        }
        Ok(Self {
            next_seq,
            last_hash: hash.to_ascii_lowercase(),
        })
    }
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.next_seq, self.last_hash)
    }
}

/// Checks a SHA-256 chain given as `(file name, contents)` in order (oldest
/// first); see [`verify_keyed`].
pub fn verify<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<ChainSummary, BrokenChain> {
    verify_keyed(files, None)
}

/// [`verify_keyed`], then the chain must pass through `anchor`: no record
/// from the anchor on may be missing, at the start or at the end. Without
/// an anchor, a trail with its first records cut verifies from its first
/// remaining record (it cannot be told from one whose oldest files were
/// pruned).
pub fn verify_anchored<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    hmac_key: Option<&[u8]>,
    anchor: &Anchor,
) -> Result<ChainSummary, BrokenChain> {
    let files: Vec<(&str, &[u8])> = files.into_iter().collect();
    let mut summary = verify_keyed(files.iter().copied(), hmac_key)?;
    let first_name = files.first().map_or("", |(name, _)| *name);
    let last_name = files.last().map_or("", |(name, _)| *name);
    let cut = |file: &str, problem: String| BrokenChain {
        file: file.to_string(),
        line: 1,
        problem,
    };
    let Some(first) = summary.first_seq else {
        return Err(cut(
            first_name,
            format!(
                "no records, but the anchor names seq {}: the trail was emptied",
                anchor.next_seq
            ),
        ));
    };
    let next = first + summary.records;
    if first > anchor.next_seq {
        return Err(cut(
            first_name,
            format!(
                "the trail starts at seq {first}, after the anchor's seq {}: records {}..{} were cut",
                anchor.next_seq,
                anchor.next_seq,
                first - 1
            ),
        ));
    }
    if next < anchor.next_seq {
        return Err(cut(
            last_name,
            format!(
                "the trail ends at seq {}, before the anchor's seq {}: records were cut off its end",
                next - 1,
                anchor.next_seq
            ),
        ));
    }
    // The record at the anchor must name the anchor's hash (or, when the
    // anchor is the end, the last record must hash to it).
    let at_anchor = if next == anchor.next_seq {
        summary.last_hash.clone()
    } else {
        prev_of(&files, anchor.next_seq).unwrap_or_default()
    };
    if at_anchor != anchor.last_hash {
        return Err(cut(
            first_name,
            format!(
                "the chain does not pass through the anchor {anchor}: these records are not the ones it was taken from"
            ),
        ));
    }
    summary.anchored = true;
    Ok(summary)
}

/// The `prev` of the record with `seq` in `files` (already verified).
fn prev_of(files: &[(&str, &[u8])], seq: u64) -> Option<String> {
    files
        .iter()
        .flat_map(|(_, contents)| contents.split(|&b| b == b'\n'))
        .filter(|line| !line.is_empty())
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .find(|value| value.get("seq").and_then(serde_json::Value::as_u64) == Some(seq))
        .and_then(|value| value.get("prev")?.as_str().map(str::to_string))
}

/// Checks a chain given as `(file name, contents)` in order (oldest first),
/// linked by HMAC-SHA256 under `hmac_key` when given, else by SHA-256; a
/// record linked the other way is refused. A chain may start mid-way (older
/// files rotated away and pruned): its first record is then trusted as the
/// anchor, unless its `seq` is 0, which must follow [`GENESIS`].
pub fn verify_keyed<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    hmac_key: Option<&[u8]>,
) -> Result<ChainSummary, BrokenChain> {
    let link = Link::new(hmac_key);
    let mut prev: Option<(String, u64, String, usize)> = None; // hash, seq, file, line
    let mut summary = ChainSummary {
        records: 0,
        first_seq: None,
        last_hash: GENESIS.to_string(),
        anchored: false,
    };
    for (name, contents) in files {
        let broken = |line: usize, problem: String| BrokenChain {
            file: name.to_string(),
            line,
            problem,
        };
        if contents.is_empty() {
            continue;
        }
        let Some(body) = contents.strip_suffix(b"\n") else {
            let line = contents.split(|&b| b == b'\n').count();
            return Err(broken(
                line,
                "the last record is incomplete (no newline)".into(),
            ));
        };
        for (index, line) in body.split(|&b| b == b'\n').enumerate() {
            let number = index + 1;
            let value: serde_json::Value = serde_json::from_slice(line)
                .map_err(|_| broken(number, "not a JSON audit record".into()))?;
            let (Some(seq), Some(claimed)) = (
                value.get("seq").and_then(serde_json::Value::as_u64),
                value.get("prev").and_then(serde_json::Value::as_str),
            ) else {
                return Err(broken(number, "record lacks seq or prev".into()));
            };
            let keyed = value.get("chain").and_then(serde_json::Value::as_str) == Some(HMAC_CHAIN);
            match (keyed, hmac_key.is_some()) {
                (true, false) => {
                    return Err(broken(
                        number,
                        "the record is linked by HMAC-SHA256: verify with the key \
                         (--hmac-key-file)"
                            .into(),
                    ));
                }
                (false, true) => {
                    return Err(broken(
                        number,
                        "the record is not HMAC-linked although a key was given".into(),
                    ));
                }
                _ => {}
            }
            match &prev {
                None => {
                    if seq == 0 && claimed != GENESIS {
                        return Err(broken(
                            number,
                            "the first record (seq 0) does not start from the genesis hash".into(),
                        ));
                    }
                    summary.first_seq = Some(seq);
                }
                Some((hash, prev_seq, prev_file, prev_line)) => {
                    if seq != prev_seq + 1 {
                        return Err(broken(
                            number,
                            format!(
                                "seq {seq} follows seq {prev_seq} ({prev_file}:{prev_line}): \
                                 records were deleted or reordered"
                            ),
                        ));
                    }
                    if claimed != hash {
                        let or_key = if hmac_key.is_some() {
                            " (or the HMAC key is not the one it was written with)"
                        } else {
                            ""
                        };
                        return Err(BrokenChain {
                            file: prev_file.clone(),
                            line: *prev_line,
                            problem: format!(
                                "record seq {prev_seq} was modified: it does not hash to the \
                                 prev of the record after it ({name}:{number}){or_key}"
                            ),
                        });
                    }
                }
            }
            let hash = link.hash(line);
            summary.records += 1;
            summary.last_hash.clone_from(&hash);
            prev = Some((hash, seq, name.to_string(), number));
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use ring::digest::{SHA256, digest};
    use zeroize::Zeroizing;

    use super::*;
    use crate::audit::{
        AuditError, AuditLog, AuditOptions, AuditSink,
        fixtures::{event, read, trail, verify_trail},
    };

    #[tokio::test]
    async fn an_edit_and_a_deletion_are_each_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::file(&path, 0).unwrap();
        for i in 0..4 {
            log.record(&event(&format!("r{i}"))).await.unwrap();
        }
        let text = String::from_utf8(read(&path)).unwrap();
        let edited = text.replacen("\"r1\"", "\"rX\"", 1);
        let err = verify([("a", edited.as_bytes())]).unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        assert!(err.problem.contains("modified"), "{err}");

        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(1);
        let deleted = format!("{}\n", lines.join("\n"));
        let err = verify([("a", deleted.as_bytes())]).unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        assert!(err.problem.contains("deleted"), "{err}");
    }

    #[tokio::test]
    async fn an_anchor_reports_records_cut_off_the_start_or_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::file(&path, 0).unwrap();
        // The head the broker logs at opening: next seq 0, the genesis.
        let (seq, hash) = log.head().await.unwrap();
        let opening = Anchor {
            next_seq: seq,
            last_hash: hash,
        };
        for i in 0..3 {
            log.record(&event(&format!("r{i}"))).await.unwrap();
        }
        let (seq, hash) = log.head().await.unwrap();
        let middle = Anchor {
            next_seq: seq,
            last_hash: hash,
        };
        for i in 3..6 {
            log.record(&event(&format!("r{i}"))).await.unwrap();
        }
        let text = String::from_utf8(read(&path)).unwrap();
        let whole = verify_anchored([("a", text.as_bytes())], None, &opening).unwrap();
        assert!(whole.anchored);
        assert_eq!(whole.next_anchor().next_seq, 6);
        verify_anchored([("a", text.as_bytes())], None, &middle).unwrap();
        verify_anchored([("a", text.as_bytes())], None, &whole.next_anchor()).unwrap();

        // The first two records cut: alone, the rest still verifies ...
        let lines: Vec<&str> = text.lines().collect();
        let cut = format!("{}\n", lines[2..].join("\n"));
        let alone = verify([("a", cut.as_bytes())]).unwrap();
        assert_eq!(alone.first_seq, Some(2));
        assert!(!alone.anchored);
        // ... against the opening anchor the cut is reported, by seq.
        let err = verify_anchored([("a", cut.as_bytes())], None, &opening).unwrap_err();
        assert!(err.problem.contains("records 0..1 were cut"), "{err}");
        // A later anchor inside what is left still holds.
        verify_anchored([("a", cut.as_bytes())], None, &middle).unwrap();

        // The last record cut: the anchor of a previous check reports it.
        let short = format!("{}\n", lines[..5].join("\n"));
        let err =
            verify_anchored([("a", short.as_bytes())], None, &whole.next_anchor()).unwrap_err();
        assert!(err.problem.contains("cut off its end"), "{err}");

        // Another trail's anchor (same seq, other hash) is refused.
        let foreign = Anchor {
            next_seq: 3,
            last_hash: "ab".repeat(32),
        };
        let err = verify_anchored([("a", text.as_bytes())], None, &foreign).unwrap_err();
        assert!(err.problem.contains("does not pass through"), "{err}");
        let err = verify_anchored([("a", b"".as_slice())], None, &opening).unwrap_err();
        assert!(err.problem.contains("emptied"), "{err}");
    }

    #[test]
    fn an_anchor_is_written_and_read_as_seq_colon_hash() {
        let anchor: Anchor = format!("12:{}", "AB".repeat(32)).parse().unwrap();
        assert_eq!(anchor.next_seq, 12);
        assert_eq!(anchor.to_string(), format!("12:{}", "ab".repeat(32)));
        for bad in ["12", "x:ab", "12:abc", &format!("12:{}", "zz".repeat(32))] {
            assert!(bad.parse::<Anchor>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn an_hmac_chain_verifies_with_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let key = b"a key nobody else reads".to_vec();
        let log = AuditLog::open(AuditOptions {
            hmac_key: Some(Zeroizing::new(key.clone())),
            ..AuditOptions::new(AuditSink::File(path.clone()))
        })
        .unwrap();
        for i in 0..3 {
            log.record(&event(&format!("r{i}"))).await.unwrap();
        }
        drop(log);
        let files = trail(&path);
        assert_eq!(verify_trail(&files, Some(&key)).unwrap().records, 3);
        let err = verify_trail(&files, None).unwrap_err();
        assert!(err.problem.contains("--hmac-key-file"), "{err}");
        let err = verify_trail(&files, Some(b"another key")).unwrap_err();
        assert!(err.problem.contains("HMAC key"), "{err}");
        // A plain SHA-256 chain recomputed by someone without the key fails.
        let text = String::from_utf8(read(&path)).unwrap();
        let mut prev = GENESIS.to_string();
        let mut forged = String::new();
        for line in text.lines() {
            let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["prev"] = prev.clone().into();
            let line = serde_json::to_string(&value).unwrap();
            prev = data_encoding::HEXLOWER.encode(digest(&SHA256, line.as_bytes()).as_ref());
            forged.push_str(&line);
            forged.push('\n');
        }
        assert!(verify_keyed([("f", forged.as_bytes())], Some(&key)).is_err());
        // The broker refuses to continue a keyed trail without the key.
        assert!(matches!(
            AuditLog::file(&path, 0),
            Err(AuditError::ChainMismatch { keyed: true, .. })
        ));
    }
}
