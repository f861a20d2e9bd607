//! Test databases: each test's own, dropped when it ends (also when it fails), and keys made
//! straight in it.

use sqlx::PgPool;

/// The PostgreSQL server tests create their databases on: `DATABASE_URL` (any database on
/// it), or the local default.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that does not exist yet (the server creates it), dropped when this goes out of
/// scope, also when the test fails. Declare it before the servers using it, so they stop first.
pub struct TestDb {
    pub url: String,
    name: String,
}

impl TestDb {
    pub fn new() -> Self {
        let base = server_url();
        let (prefix, _) = base.rsplit_once('/').expect("URL with a database path");
        let prefix = prefix.split('?').next().unwrap();
        let name = format!("ob_test_{}", uuid::Uuid::new_v4().simple());
        Self {
            url: format!("{prefix}/{name}"),
            name,
        }
    }

    /// Creates the (empty) database now, for a test that sets it up before a server starts.
    pub async fn create(&self) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&server_url()).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE \"{}\"", self.name))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread of our own.
        let (admin, name) = (server_url(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .map(|_| ())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// Creates the database at `url` and applies the migrations up to `version` only: the schema
/// an older release left.
pub async fn migrate_to(url: &str, version: i64) {
    use sqlx::Connection;
    let name = url.rsplit_once('/').unwrap().1;
    let mut conn = sqlx::PgConnection::connect(&server_url()).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .unwrap();
    let pool = PgPool::connect(url).await.unwrap();
    let mut m = sqlx::migrate::Migrator::new(std::path::Path::new("migrations"))
        .await
        .unwrap();
    m.migrations = (m.migrations.iter())
        .filter(|m| m.version <= version)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    m.run(&pool).await.unwrap();
    pool.close().await;
}

/// A new API key for `project` (created if missing), straight in the database.
pub async fn key_for(pool: &PgPool, project: &str) -> String {
    project_and_key(pool, project).await.1
}

/// The id of `project` (created if missing) and a new API key for it.
pub async fn project_and_key(pool: &PgPool, project: &str) -> (String, String) {
    let name = openbatch::domain::ProjectName::parse(project).unwrap();
    let id = openbatch::store::keys::ensure_project(pool, &name)
        .await
        .unwrap();
    let key = openbatch::domain::ApiKey::generate();
    openbatch::store::keys::create_owned(pool, &id, "test", &key)
        .await
        .unwrap();
    (id.as_str().to_owned(), key.secret)
}
