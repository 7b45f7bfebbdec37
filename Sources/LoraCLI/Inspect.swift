import ArgumentParser
import Foundation
import LoRA

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show what a safetensors file, adapter directory or model directory holds.")
    @Argument(help: "A .safetensors file, a PEFT adapter directory or a model directory.") var path: String
    @Flag(help: "List every tensor (default: at most 40).") var all = false

    func run() throws {
        try LoRACommand.run {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
                throw LoRAError.io(path: path, reason: "no such file or directory")
            }
            if !isDir.boolValue { try tensors(path); return }
            if FileManager.default.fileExists(atPath: path + "/" + Adapter.configFile) {
                let c = try LoRAConfig.load(path: path + "/" + Adapter.configFile)
                say("PEFT LoRA adapter: \(path)")
                say(
                    "  r \(c.r), lora_alpha \(c.loraAlpha), dropout \(c.loraDropout), rslora \(c.useRSLoRA), dora \(c.useDoRA), lora_bias \(c.loraBias)"
                )
                say("  target_modules \(describe(c.targetModules)), layers_to_transform \(c.layersToTransform.map { "\($0)" } ?? "all")")
                if let m = c.modulesToSave, !m.isEmpty { say("  modules_to_save \(m.joined(separator: ", "))") }
                if !c.rankPattern.isEmpty { say("  rank_pattern \(c.rankPattern.map { "\($0.key)=\($0.value)" }.joined(separator: ", "))") }
                if !c.alphaPattern.isEmpty {
                    say("  alpha_pattern \(c.alphaPattern.map { "\($0.key)=\($0.value)" }.joined(separator: ", "))")
                }
                say("  base model \(c.baseModelNameOrPath ?? "unknown")")
                try tensors(path + "/" + Adapter.weightsFile)
            } else if FileManager.default.fileExists(atPath: path + "/config.json") {
                let c = try GPT2Config.load(path: path + "/config.json")
                say("GPT-2 model: \(path)")
                say(
                    "  n_layer \(c.nLayer), n_embd \(c.nEmbd), n_head \(c.nHead), n_inner \(c.innerSize), n_positions \(c.nPositions), vocab \(c.vocabSize)"
                )
                say("  activation \(c.activation.rawValue), layer_norm_epsilon \(c.layerNormEpsilon), parameters \(c.parameterCount)")
                if let t = try? Tokenizer.load(directory: path) { say("  tokenizer: \(t.vocabSize) tokens") }
                try tensors(path + "/model.safetensors")
            } else {
                throw LoRAError.invalidArgument("\(path) holds neither adapter_config.json nor config.json")
            }
        }
    }

    func describe(_ t: LoRAConfig.Targets?) -> String {
        switch t {
        case nil: return "default (c_attn)"
        case .names(let n)?: return n.joined(separator: ", ")
        case .regex(let r)?: return "regex \(r)"
        }
    }

    func tensors(_ file: String) throws {
        try Inspect.checkLooksLikeSafetensors(file)
        let f = try SafeTensorsFile(path: file)
        var params = 0
        var byDType: [String: Int] = [:]
        for t in f.tensors { params += t.count; byDType[t.dtype.rawValue, default: 0] += t.count }
        say(
            "\(file): \(f.tensors.count) tensors, \(params) parameters (\(byDType.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")))"
        )
        if let md = f.metadata {
            say("  metadata \(md.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ", "))")
        }
        let list = f.tensors.sorted { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
        for t in list.prefix(all ? list.count : 40) {
            say("  \(t.name)  \(t.dtype.rawValue)  \(t.shape)")
        }
        if !all && list.count > 40 { say("  … \(list.count - 40) more (--all)") }
    }

    /// A file that is not safetensors at all gets said so, not "header length 2841324282203627843 exceeds the limit".
    static func checkLooksLikeSafetensors(_ file: String) throws {
        guard let h = FileHandle(forReadingAtPath: file) else { throw LoRAError.io(path: file, reason: "cannot read file") }
        defer { try? h.close() }
        let head = h.readData(ofLength: 9)
        let size = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? NSNumber)?.uint64Value ?? 0
        var n: UInt64 = 0
        for (i, b) in head.prefix(8).enumerated() { n |= UInt64(b) << (8 * UInt64(i)) }
        guard head.count == 9, n >= 2, n <= size - 8, head[head.startIndex + 8] == UInt8(ascii: "{") else {
            throw LoRAError.invalidFile(
                path: file,
                reason: "not a safetensors file (it starts with neither an 8-byte header length that fits the file nor a JSON header)")
        }
    }
}
