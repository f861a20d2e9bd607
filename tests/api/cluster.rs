//! A throwaway PostgreSQL cluster that a test may stop and start at will: the same
//! `local_pg::PgServer` the first run's private server uses, on a TCP port of its own.

use std::path::PathBuf;

use openbatch::local_pg::PgServer;

pub struct Cluster {
    dir: PathBuf,
    server: PgServer,
    pub port: u16,
}

impl Cluster {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("ob-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = PgServer::find(dir.join("data")).expect("PostgreSQL's server programs");
        let cluster = Self { dir, server, port };
        cluster
            .server
            .hand_over(&[&cluster.dir], &cluster.log())
            .expect("the cluster's directory handed to the postgres user");
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = off\n",
            cluster.port,
            cluster.dir.display()
        );
        cluster.server.init(&conf, false).expect("initdb");
        cluster.start_again();
        cluster
    }

    fn log(&self) -> PathBuf {
        self.dir.join("log")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn stop(&self) {
        self.server.stop("fast").expect("pg_ctl stop");
    }

    pub fn start_again(&self) {
        self.server.start(&self.log()).expect("pg_ctl start");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.server.stop("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
