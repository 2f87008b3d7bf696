//! Worker processes from an ordinary `#[test]` suite: [`test_support!`](crate::test_support)
//! (feature `testing`).

/// Lets the tests of a plain libtest test binary (no `harness = false`, no `main` of its own)
/// start worker processes: pools, routers, children and placed stages.
///
/// Worker processes are copies of the running binary, and a test binary's `main` is libtest's,
/// which never calls [`init`](crate::init). Invoked once at the top of the test file, the
/// macro adds a `#[test]` whose body is `engine_proc::init()`, and registers it before `main`
/// runs: every worker process is then started as that one test (`<its name> --exact
/// --test-threads=1`), so libtest in the worker runs nothing but the worker. In the test run
/// itself that test passes at once. The model is procspawn's `enable_test_support!`.
///
/// A worker's standard output is discarded unless the tests run with `--nocapture` or
/// `--show-output` (libtest would print its own lines there); its standard error is kept.
/// Linux only, like the crate: the registration is an entry in the binary's `.init_array`.
///
/// Needs the `testing` feature: `engine-proc = { version = "…", features = ["testing"] }`
/// under `[dev-dependencies]`.
///
/// ```no_run
/// // tests/square.rs: a plain libtest file.
/// use engine::core::{StageContext, StageError, Transport};
/// use engine::proc::Pool;
/// use serde::{Deserialize, Serialize};
///
/// engine::proc::test_support!();
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Square;
///
/// impl Transport for Square {
///     type Input = u64;
///     type Output = u64;
///     fn transport(&mut self, x: u64, _: &StageContext) -> Result<Option<u64>, StageError> {
///         Ok(Some(x * x))
///     }
/// }
///
/// #[test]
/// fn a_pool_squares() {
///     let mut pool = Pool::builder().workers(2, Square).start().unwrap();
///     let squares: Vec<u64> = pool.map(0..100).collect::<Result<_, _>>().unwrap();
///     assert_eq!(squares[9], 81);
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! test_support {
    () => {
        /// The test that worker processes of this binary are started as.
        #[test]
        fn __engine_proc_worker() {
            $crate::init();
        }

        /// Registers the worker test before `main` runs, so that the first spawn knows it.
        #[used]
        #[unsafe(link_section = ".init_array")]
        #[allow(unsafe_code, reason = "a constructor entry, as the `ctor` crate makes")]
        static __ENGINE_PROC_TEST_SUPPORT: extern "C" fn() = {
            extern "C" fn register() {
                $crate::testing::register(module_path!(), "__engine_proc_worker");
            }
            register
        };
    };
}

/// Records that worker processes of this binary are to be started as the test `test` of the
/// module `module` (its path from [`module_path!`], crate name first). Called by
/// [`test_support!`](crate::test_support) before `main`.
#[doc(hidden)]
pub fn register(module: &str, test: &str) {
    let name = match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{test}"),
        None => test.to_owned(),
    };
    crate::boot::set_test_entry(name);
}
