fn main() {
    eprintln!("router-svc: not built yet (issue 3)");
    std::process::exit(2);
}
