//! An in-process catalog for order tests: answers BatchGetProducts from a
//! fixed product list on a loopback port; every other method is
//! UNIMPLEMENTED.

use std::sync::Arc;

use commerce_proto::catalog::v1 as pb;
use commerce_proto::catalog::v1::catalog_service_server::{CatalogService, CatalogServiceServer};
use commerce_proto::common::v1::Money;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// A product of the fake catalog.
pub fn product(id: &str, units: i64, active: bool) -> pb::Product {
    pb::Product {
        id: id.to_owned(),
        sku: format!("SKU-{id}"),
        name: format!("Product {id}"),
        price: Some(Money { currency_code: "EUR".to_owned(), units }),
        active,
        ..Default::default()
    }
}

#[derive(Clone)]
struct FakeCatalog {
    products: Arc<Vec<pb::Product>>,
}

#[tonic::async_trait]
impl CatalogService for FakeCatalog {
    async fn batch_get_products(
        &self,
        request: Request<pb::BatchGetProductsRequest>,
    ) -> Result<Response<pb::BatchGetProductsResponse>, Status> {
        let ids = request.into_inner().ids;
        let products: Vec<pb::Product> =
            self.products.iter().filter(|product| ids.contains(&product.id)).cloned().collect();
        let missing_ids =
            ids.into_iter().filter(|id| !products.iter().any(|product| &product.id == id)).collect();
        Ok(Response::new(pb::BatchGetProductsResponse { products, missing_ids }))
    }

    async fn create_product(
        &self,
        _: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        Err(Status::unimplemented("fake catalog"))
    }

    async fn get_product(
        &self,
        _: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        Err(Status::unimplemented("fake catalog"))
    }

    async fn update_product(
        &self,
        _: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        Err(Status::unimplemented("fake catalog"))
    }

    async fn delete_product(
        &self,
        _: Request<pb::DeleteProductRequest>,
    ) -> Result<Response<pb::DeleteProductResponse>, Status> {
        Err(Status::unimplemented("fake catalog"))
    }

    async fn list_products(
        &self,
        _: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        Err(Status::unimplemented("fake catalog"))
    }

    async fn create_category(
        &self,
        _: Request<pb::CreateCategoryRequest>,
    ) -> Result<Response<pb::CreateCategoryResponse>, Status> {
        Err(Status::unimplemented("fake catalog"))
    }

    async fn list_categories(
        &self,
        _: Request<pb::ListCategoriesRequest>,
    ) -> Result<Response<pb::ListCategoriesResponse>, Status> {
        Err(Status::unimplemented("fake catalog"))
    }

    async fn get_catalog_version(
        &self,
        _: Request<pb::GetCatalogVersionRequest>,
    ) -> Result<Response<pb::GetCatalogVersionResponse>, Status> {
        Err(Status::unimplemented("fake catalog"))
    }
}

/// Serves `products` on a loopback port until `shutdown`; returns the port.
pub async fn start(products: Vec<pb::Product>, shutdown: CancellationToken) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let service = CatalogServiceServer::new(FakeCatalog { products: Arc::new(products) });
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
            .await;
    });
    Ok(port)
}
