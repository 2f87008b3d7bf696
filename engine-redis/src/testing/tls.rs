//! Test certificates for a TLS `redis-server`: a throwaway CA and a certificate for
//! `127.0.0.1` signed by it, made with the `openssl` command.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

use super::ServerError;

/// The CA certificate's file name, in the server's directory.
pub(super) const CA_FILE: &str = "ca.pem";

/// Makes a throwaway CA and a certificate for `127.0.0.1` signed by it, in `dir`, with the
/// `openssl` command.
pub(super) fn make_certificates(dir: &Path) -> Result<(), ServerError> {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|source| ServerError::Io {
        action: format!("write {}", dir.join("server.ext").display()),
        source,
    })?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: [&[&str]; 3] = [
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", CA_FILE, "-days", "2"],
            &["-subj", "/CN=engine-redis test CA"],
        ]
        .concat(),
        &[
            &["req"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
            &["-subj", "/CN=127.0.0.1"],
        ]
        .concat(),
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            CA_FILE,
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ServerError::Io {
                action: "run openssl to make a test certificate (install it with \
                         `apt-get install -y openssl`)"
                    .to_owned(),
                source,
            })?;
        if !out.status.success() {
            return Err(ServerError::Io {
                action: format!("make a test certificate with openssl {}", args.join(" ")),
                source: io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
            });
        }
    }
    Ok(())
}
