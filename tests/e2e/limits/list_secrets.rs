//! `ListSecrets` against a real OpenBao: the caller is authorized (`list`
//! by policy) before Vault is asked anything, so a caller with no rule gets
//! `PERMISSION_DENIED` without a single Vault request; a caller who may list
//! is charged its own share of Vault requests, so its flood of listings is
//! shed (`RESOURCE_EXHAUSTED`) instead of queueing in front of every other
//! tenant's cold reads.

use std::time::{Duration, Instant};

use coffer::Code;
use coffer_tests::{
    BrokerProcess, Ctl, Key, mint, openbao::OpenBao, policy_with, rule, vault_args,
};

/// The shared policy, and what these tests add to it.
fn policy() -> String {
    policy_with(&[rule(
        "lister-lists-shop",
        "ops/lister",
        &["shop/*"],
        &["list"],
    )])
}

fn broker(bao: &OpenBao, extra: &str) -> BrokerProcess {
    let args = vault_args(bao, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    BrokerProcess::builder()
        .policy(&policy())
        .args(&args)
        .start()
}

/// Vault `list` requests seen on the KV v2 metadata of `folder`.
fn vault_lists(bao: &OpenBao, folder: &str) -> usize {
    bao.audited("list", &format!("secret/metadata/{folder}"))
        + bao.audited("list", &format!("secret/metadata/{folder}/"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_without_a_rule_is_refused_before_vault_is_asked() {
    let bao = OpenBao::start();
    bao.bao(&["kv", "put", "secret/shop/db", "password=canary-list"]);
    let broker = broker(&bao, "");
    let nobody = broker.client(mint(Key::Rsa, "evil", "nobody")).await;
    for folder in ["shop", "shop/db", "elsewhere", ""] {
        for _ in 0..10 {
            let error = nobody.list_secrets(folder).await.unwrap_err();
            assert_eq!(
                error.code(),
                Some(Code::PermissionDenied),
                "{folder:?}: {error}"
            );
        }
    }
    // A workload that may read but not list: the same answer.
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;
    let error = web.list_secrets("shop").await.unwrap_err();
    assert_eq!(error.code(), Some(Code::PermissionDenied));
    assert_eq!(vault_lists(&bao, "shop"), 0, "no Vault list was made");
    assert_eq!(vault_lists(&bao, "shop/db"), 0);

    // One who may list still gets the names, from one Vault request.
    let ctl = Ctl::new(&broker);
    let (code, out, err) = ctl.as_("ops/lister", &["list", "shop"], b"");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "db");
    assert_eq!(vault_lists(&bao, "shop"), 1);
    // Nothing under the folder, or a folder no mount serves: nothing to
    // list, told as a denial (not NOT_FOUND or UNIMPLEMENTED).
    let lister = broker.client(mint(Key::Rsa, "ops", "lister")).await;
    for folder in ["shop/empty", "shop/db"] {
        let error = lister.list_secrets(folder).await.unwrap_err();
        assert_eq!(error.code(), Some(Code::PermissionDenied), "{folder}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_listings_is_charged_to_its_caller_not_to_other_tenants() {
    let bao = OpenBao::start();
    bao.bao(&["kv", "put", "secret/shop/db", "password=victim-canary"]);
    let broker = broker(
        &bao,
        "limits: {maxRequestsPerSecond: 10, perIdentityRequestsPerSecond: 5, \
         perIdentityBurst: 5, perIdentityMaxWait: 500ms}\n",
    );
    let lister = broker.client(mint(Key::Rsa, "ops", "lister")).await;
    let victim = broker.client(mint(Key::Ec, "shop", "web")).await;
    // Both tokens verified once and cached, so the flood reaches the store
    // at once.
    lister.list_secrets("shop").await.unwrap();
    assert_eq!(
        victim.get("shop/warm-up").await.unwrap_err().code(),
        Some(Code::NotFound)
    );
    // Listings outlive Vault's answer in no cache: each is a Vault request.
    let flood = tokio::spawn(async move {
        let lists = (0..200).map(|_| {
            let lister = lister.clone();
            async move { lister.list_secrets("shop").await }
        });
        futures::future::join_all(lists).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let secret = victim.get("shop/db").await.unwrap();
    let waited = start.elapsed();
    eprintln!("the other tenant's cold read took {waited:?} during the flood");
    assert_eq!(
        secret.data().key("password").unwrap().expose(),
        b"victim-canary"
    );
    assert!(
        waited < Duration::from_secs(3),
        "the other tenant waited {waited:?}"
    );
    let results = flood.await.unwrap();
    let shed = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.code() == Some(Code::ResourceExhausted)))
        .count();
    assert!(shed > 100, "the flood's excess is refused: {shed} of 200");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(e) if e.code() == Some(Code::ResourceExhausted))),
        "every listing is answered or refused as over its share"
    );
    assert!(
        vault_lists(&bao, "shop") < 40,
        "{} Vault lists for 200 asks",
        vault_lists(&bao, "shop")
    );
}
