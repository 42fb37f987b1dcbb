//! TokenReview. No kube-apiserver can run here, so the API server is played
//! by a local HTTPS server (its own CA, made in the test) that speaks the
//! `authentication.k8s.io/v1` TokenReview contract: it is a stand-in, and
//! what it proves is that the broker sends what the API server expects and
//! reads its answers correctly.

use std::{sync::Arc, time::Duration};

use coffer::Code;
use coffer_tests::{AUDIENCE, BrokerProcess, ISSUER, Key, https::HttpsServer, web_token};
use serde_json::{Value, json};

const REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const BROKER_TOKEN: &str = "broker-own-credential";

/// A JWT-shaped token for `pod` (the issuer routes it; the review decides).
fn token(pod: &str) -> String {
    web_token(Key::Rsa, Some(pod), Duration::from_secs(600))
}

/// The API server's answer, chosen by the pod named in the token.
fn review(request: &Value, by_pod: &[(String, &'static str)]) -> (u16, String) {
    let token = request["spec"]["token"].as_str().unwrap_or_default();
    let case = by_pod
        .iter()
        .find(|(t, _)| t == token)
        .map_or("unknown", |c| c.1);
    let user = |username: &str| {
        json!({
            "username": username,
            "uid": "sa-uid-1",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:shop"],
            "extra": {
                "authentication.kubernetes.io/pod-name": ["web-0"],
                "authentication.kubernetes.io/pod-uid": ["pod-uid-1"],
            },
        })
    };
    let status = match case {
        "web" => {
            json!({"authenticated": true, "user": user("system:serviceaccount:shop:web"), "audiences": [AUDIENCE]})
        }
        "intruder" => {
            json!({"authenticated": true, "user": user("system:serviceaccount:shop:intruder"), "audiences": [AUDIENCE]})
        }
        "admin" => {
            json!({"authenticated": true, "user": user("system:serviceaccount:ops:admin"), "audiences": [AUDIENCE]})
        }
        "human" => json!({"authenticated": true, "user": user("alice"), "audiences": [AUDIENCE]}),
        "other-audience" => {
            json!({"authenticated": true, "user": user("system:serviceaccount:shop:web"), "audiences": ["vault"]})
        }
        "outage" => return (500, "{}".into()),
        _ => {
            json!({"authenticated": false, "error": "[invalid bearer token, token has been invalidated]"})
        }
    };
    (
        201,
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": request["spec"],
            "status": status,
        })
        .to_string(),
    )
}

#[tokio::test]
async fn token_review_decides_and_positive_answers_are_cached() {
    let cases: Vec<(String, &'static str)> = [
        "web",
        "intruder",
        "human",
        "other-audience",
        "outage",
        "revoked",
    ]
    .iter()
    .map(|case| (token(&format!("{case}-pod")), *case))
    .collect();
    let table = cases.clone();
    let server = HttpsServer::kube_api_server(Arc::new(move |seen| {
        if seen.method != "POST" || seen.path != REVIEW_PATH {
            return (404, "{}".into());
        }
        if seen.authorization.as_deref() != Some(&format!("Bearer {BROKER_TOKEN}")) {
            return (401, "{}".into());
        }
        review(
            &serde_json::from_str(&seen.body).unwrap_or_default(),
            &table,
        )
    }));

    let dir = tempfile::tempdir().unwrap();
    let own_token = dir.path().join("token");
    std::fs::write(&own_token, format!("{BROKER_TOKEN}\n")).unwrap();
    let config = dir.path().join("auth.yaml");
    std::fs::write(
        &config,
        format!(
            "authenticators:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    tokenReview:\n      server: {}\n      caFile: {}\n      tokenFile: {}\n      ttlSeconds: 60\n",
            server.url,
            server.ca_file.display(),
            own_token.display()
        ),
    )
    .unwrap();
    let broker = BrokerProcess::builder()
        .auth_args(["--auth-config".as_ref(), config.as_os_str()])
        .start();
    let token_of = |case: &str| cases.iter().find(|c| c.1 == case).unwrap().0.clone();
    let code = |case: &'static str| broker.read_code(token_of(case), "shop/db");

    // shop/web may read shop/db (absent: NotFound); shop/intruder may not.
    assert_eq!(code("web").await, Some(Code::NotFound));
    assert_eq!(code("intruder").await, Some(Code::PermissionDenied));
    for (case, reason) in [
        ("revoked", "review_rejected"),
        ("human", "not_service_account"),
        ("other-audience", "wrong_audience"),
        ("outage", "review_unavailable"),
    ] {
        assert_eq!(code(case).await, Some(Code::Unauthenticated), "{case}");
        assert_eq!(
            broker.auth_failure_reasons().last().map(String::as_str),
            Some(reason),
            "{case}"
        );
    }

    // The broker sent the contract: its own credentials, the token and our audiences.
    let requests = server.requests();
    let first: Value = serde_json::from_str(&requests[0].body).unwrap();
    assert_eq!(first["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(first["kind"], "TokenReview");
    assert_eq!(first["spec"]["token"], token_of("web"));
    assert_eq!(first["spec"]["audiences"], json!([AUDIENCE]));
    assert!(
        requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {BROKER_TOKEN}")))
    );

    // A positive answer is reused: more calls with the same token, no more reviews.
    let reviews_of_web = || {
        server
            .requests()
            .iter()
            .filter(|r| r.body.contains(&token_of("web")))
            .count()
    };
    assert_eq!(reviews_of_web(), 1);
    for _ in 0..5 {
        assert_eq!(code("web").await, Some(Code::NotFound));
    }
    assert_eq!(reviews_of_web(), 1);
    // A refusal is remembered briefly too: the revoked token is not
    // reviewed again within the negative TTL.
    let before = server.requests().len();
    assert_eq!(code("revoked").await, Some(Code::Unauthenticated));
    assert_eq!(server.requests().len(), before);

    // Neither the workload tokens nor the broker's own credential are logged.
    let output = broker.process.output();
    assert!(!output.contains(BROKER_TOKEN));
    for (token, case) in &cases {
        assert!(!output.contains(token.as_str()), "{case} token leaked");
    }
}

#[tokio::test]
async fn the_identity_comes_from_user_info_and_extra() {
    use coffer_broker::auth::{
        Authenticator, BearerToken,
        http::HttpConfig,
        tokenreview::{TokenReviewAuthenticator, TokenReviewConfig},
    };
    let web = token("web-pod");
    let table = vec![(web.clone(), "web")];
    let server = HttpsServer::kube_api_server(Arc::new(move |seen| {
        review(
            &serde_json::from_str(&seen.body).unwrap_or_default(),
            &table,
        )
    }));
    let config = |url: &str| {
        let mut config = TokenReviewConfig::new(ISSUER, url, vec![AUDIENCE.into()]);
        config.http = HttpConfig {
            ca_file: Some(server.ca_file.clone()),
            ..HttpConfig::default()
        };
        config.ttl = Duration::from_secs(60);
        config
    };
    let authn = TokenReviewAuthenticator::new(config(&server.url)).unwrap();
    let verified = authn.authenticate(&BearerToken::new(web)).await.unwrap();
    let id = verified.identity;
    assert_eq!(id.subject(), "system:serviceaccount:shop:web");
    assert_eq!(id.service_account_uid.as_deref(), Some("sa-uid-1"));
    assert_eq!(id.pod_name.as_deref(), Some("web-0"));
    assert_eq!(id.pod_uid.as_deref(), Some("pod-uid-1"));
    assert_eq!(id.issuer, ISSUER);
    // Cached no longer than the TTL, even though the token lives 600 s.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        verified.expires_at <= now + 60,
        "{} vs {now}",
        verified.expires_at
    );

    // A server the CA bundle does not vouch for is refused (fail closed).
    let stranger = HttpsServer::start(Arc::new(|_| (201, "{}".into())));
    let wrong_ca = TokenReviewAuthenticator::new(config(&stranger.url)).unwrap();
    assert_eq!(
        wrong_ca
            .authenticate(&BearerToken::new(token("web-pod")))
            .await
            .map(|v| v.identity),
        Err(coffer_broker::auth::AuthError::ReviewUnavailable)
    );
    assert_eq!(
        stranger.requests().len(),
        0,
        "no request completed over untrusted TLS"
    );
}

/// A broker reviewing tokens at the stand-in API server `server` with
/// `extra` lines in its tokenReview section.
fn review_broker(server: &HttpsServer, extra: &str) -> BrokerProcess {
    BrokerProcess::builder().auth_config(&format!(
            "authenticators:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    tokenReview:\n      server: {}\n      caFile: {}\n{extra}",
            server.url,
            server.ca_file.display(),
        )).start()
}

#[tokio::test]
async fn a_repeated_bad_token_costs_the_api_server_one_review() {
    let server = HttpsServer::kube_api_server(Arc::new(|seen| {
        review(&serde_json::from_str(&seen.body).unwrap_or_default(), &[])
    }));
    let broker = review_broker(&server, "");
    let bad = token("revoked-pod");
    let client = broker.client(bad).await;
    for _ in 0..50 {
        let error = client.get("shop/db").await.unwrap_err();
        assert_eq!(error.code(), Some(Code::Unauthenticated));
    }
    let reviews = server.requests().len();
    assert!(
        (1..=2).contains(&reviews),
        "{reviews} reviews for one bad token"
    );
}

#[tokio::test]
async fn a_flood_of_distinct_tokens_is_throttled_not_forwarded() {
    let server = HttpsServer::kube_api_server(Arc::new(|seen| {
        review(&serde_json::from_str(&seen.body).unwrap_or_default(), &[])
    }));
    let broker = review_broker(&server, "      ratePerSecond: 5\n      maxConcurrent: 2\n");
    // 60 different bad tokens at once: each is new to the negative cache.
    let mut calls = Vec::new();
    for i in 0..60 {
        let client = broker.client(token(&format!("flood-{i}"))).await;
        calls.push(tokio::spawn(async move {
            client.get("shop/db").await.unwrap_err().code()
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), Some(Code::Unauthenticated));
    }
    // A burst of 5 plus 5/s over the 2 s a caller may wait: far fewer than 60.
    let reviews = server.requests().len();
    assert!(reviews <= 25, "{reviews} reviews for 60 calls");
    assert!(
        broker
            .auth_failure_reasons()
            .iter()
            .any(|r| r == "review_throttled"),
        "the excess is refused as review_throttled"
    );
}
