//! gRPC reflection: clients that speak only `grpc.reflection.v1alpha`
//! (older grpcurl, Postman, Evans) list the broker's services, as do v1 clients.

use coffer_tests::BrokerProcess;
use tonic_reflection::pb::{v1, v1alpha};

async fn channel(broker: &BrokerProcess) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(broker.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_v1alpha_only_client_lists_the_services() {
    let broker = BrokerProcess::builder().start();
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel(&broker).await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("not a list: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "coffer.v1.SecretBroker",
        "coffer.v1.SecretOperator",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn a_v1_client_lists_the_services() {
    let broker = BrokerProcess::builder().start();
    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(channel(&broker).await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("not a list: {response:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "coffer.v1.SecretBroker"),
        "{list:?}"
    );
}
