// Copies the gRPC contract from the repository's proto/ into the package,
// which loads it at run time (@grpc/proto-loader): no generated code to keep.
import { cpSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const from = join(here, "..", "..", "..", "proto", "switchyard", "v1", "router.proto");
const to = join(here, "..", "proto", "switchyard", "v1");
mkdirSync(to, { recursive: true });
cpSync(from, join(to, "router.proto"));
