import Foundation
import LoRA

/// The names a server answers to: the base model and its adapters, with
/// the number of requests using each adapter. Adapters loaded or unloaded
/// at run time (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`) come
/// only from inside `adapterDirectory`; unloading an adapter that running
/// requests use is refused (409) rather than waited for, so an unload
/// never hangs and the client decides when to retry.
final class AdapterRegistry: @unchecked Sendable {
    struct Entry {
        let adapter: Adapter
        let path: String
        let created: Int
        var inUse = 0
    }

    let model: Model
    let baseName: String
    let modelPath: String
    let created: Int
    /// Run-time loading: the directory paths must resolve inside (nil: loading is off).
    let adapterDirectory: String?

    private let lock = NSLock()
    private var entries: [String: Entry] = [:]
    private var order: [String] = []

    init(model: Model, baseName: String, modelPath: String, adapterDirectory: String?) {
        self.model = model
        self.baseName = baseName
        self.modelPath = modelPath
        self.adapterDirectory = adapterDirectory
        created = Int(Date().timeIntervalSince1970)
    }

    /// Names are what clients send as `model`: printable, no spaces, at most 128 bytes.
    static func checkName(_ name: String, param: String) throws(APIError) {
        guard !name.isEmpty, name.utf8.count <= 128,
            name.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value != 0x7f })
        else {
            throw .invalid(param, "an adapter name must be 1 to 128 bytes without spaces or control characters")
        }
    }

    /// Adds an adapter under `name` (start-up and run-time loading).
    func add(name: String, adapter: Adapter, path: String) throws(APIError) {
        try Self.checkName(name, param: "lora_name")
        lock.lock()
        defer { lock.unlock() }
        guard name != baseName, entries[name] == nil else {
            throw APIError(.badRequest, "the name `\(name)` is already in use", param: "lora_name", code: "name_in_use")
        }
        entries[name] = Entry(adapter: adapter, path: path, created: Int(Date().timeIntervalSince1970))
        order.append(name)
    }

    /// Removes an adapter no request uses.
    func remove(name: String) throws(APIError) {
        lock.lock()
        defer { lock.unlock() }
        guard let e = entries[name] else { throw .modelNotFound(name, param: "lora_name") }
        guard e.inUse == 0 else {
            throw APIError(
                .conflict, "the adapter `\(name)` is used by \(e.inUse) running request(s); retry when they are done",
                param: "lora_name", code: "adapter_in_use", retryAfter: 1)
        }
        entries[name] = nil
        order.removeAll { $0 == name }
    }

    /// The adapters of a request: `model` (the base or an adapter at scale 1)
    /// and then the `adapters` extension's names and scales, each counted as
    /// in use until `release` is called with the returned names.
    func acquire(model name: String, extra: [(name: String, scale: Float)]) throws(APIError) -> (uses: [AdapterUse], names: [String]) {
        lock.lock()
        defer { lock.unlock() }
        var list: [(String, Float, String)] = []
        if name != baseName {
            guard entries[name] != nil else { throw .modelNotFound(name) }
            list.append((name, 1, "model"))
        }
        for (i, x) in extra.enumerated() {
            guard entries[x.name] != nil else { throw .modelNotFound(x.name, param: "adapters[\(i)].name") }
            guard !list.contains(where: { $0.0 == x.name }) else {
                throw .invalid("adapters[\(i)].name", "the adapter `\(x.name)` is given twice")
            }
            list.append((x.name, x.scale, "adapters[\(i)]"))
        }
        for (n, _, _) in list { entries[n]?.inUse += 1 }
        return (list.map { AdapterUse(entries[$0.0]!.adapter, scale: $0.1) }, list.map(\.0))
    }

    func release(_ names: [String]) {
        lock.lock()
        defer { lock.unlock() }
        for n in names { entries[n]?.inUse -= 1 }
    }

    /// (name, path, created) of every adapter, in loading order.
    var adapters: [(name: String, path: String, created: Int)] {
        lock.lock()
        defer { lock.unlock() }
        return order.compactMap { n in entries[n].map { (n, $0.path, $0.created) } }
    }

    var count: Int {
        lock.lock()
        defer { lock.unlock() }
        return entries.count
    }

    /// The directory of a run-time load: `path` relative to (or absolute
    /// inside) the adapter directory, symbolic links resolved, never outside it.
    func resolveInside(_ path: String) throws(APIError) -> String {
        guard let root = adapterDirectory else {
            throw APIError(.badRequest, "adapter loading needs --adapter-dir", param: "lora_path")
        }
        guard !path.isEmpty, !path.utf8.contains(0) else { throw .invalid("lora_path", "lora_path must be a non-empty path") }
        let rootReal = URL(fileURLWithPath: root).resolvingSymlinksInPath().standardizedFileURL.path
        let joined = path.hasPrefix("/") ? path : rootReal + "/" + path
        let real = URL(fileURLWithPath: joined).resolvingSymlinksInPath().standardizedFileURL.path
        guard real == rootReal || real.hasPrefix(rootReal.hasSuffix("/") ? rootReal : rootReal + "/") else {
            throw APIError(
                .forbidden, "lora_path must be inside the server's adapter directory", type: "invalid_request_error",
                param: "lora_path", code: "path_outside_adapter_dir")
        }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: real, isDirectory: &isDir), isDir.boolValue else {
            throw APIError(.notFound, "no adapter directory `\(path)` in the adapter directory", param: "lora_path", code: "not_found")
        }
        return real
    }
}
