//! `cofferctl policy lint`: every spelling of a pattern that matches every
//! path is flagged, and two template variables in one segment are refused.

use coffer_tests::cofferctl;

fn lint(policy: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy).unwrap();
    cofferctl(["policy".as_ref(), "lint".as_ref(), file.as_os_str()])
}

#[test]
fn every_match_everything_pattern_is_flagged() {
    for pattern in ["*", "**", "*/**", "**/*", "**/**"] {
        let (code, out) = lint(&format!(
            "rules:\n  - name: broad\n    subjects: [{{namespace: shop, serviceAccount: web}}]\n    paths: [\"{pattern}\"]\n    capabilities: [read]\n"
        ));
        assert_eq!(code, 0, "{pattern}: {out}");
        assert!(
            out.contains("warning: rule broad: grants access to every path"),
            "{pattern}: {out}"
        );
    }
    let (_, out) = lint(
        "rules:\n  - name: narrow\n    subjects: [{namespace: shop, serviceAccount: web}]\n    paths: [\"shop/**\"]\n    capabilities: [read]\n",
    );
    assert!(out.contains("0 warnings"), "{out}");
}

#[test]
fn two_variables_in_one_segment_are_refused() {
    let (code, out) = lint(
        "rules:\n  - subjects: [{namespace: \"*\", serviceAccount: \"*\"}]\n    paths: [\"{namespace}-{serviceaccount}/*\"]\n    capabilities: [read]\n",
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("two variables in one segment"), "{out}");
}
