//! The `junction` command line.

fn main() {
    println!("junction: not yet wired");
}
