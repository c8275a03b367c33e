//! skiff-api is the API server: it serves the Kubernetes REST API (discovery, OpenAPI,
//! CRUD, patch, watch, tables) over hyper on top of a [`skiff_store::Store`], so kubectl and
//! every other Kubernetes client work against skiff unchanged.
