import CLoraSupport
import Foundation

// GGUF export for llama.cpp: the base GPT-2 as a GGUF model and an adapter
// as a GGUF LoRA (`lora export-gguf`). The names, orientations and keys are
// llama.cpp's (gguf-py `constants.py`, src/models/gpt2.cpp,
// src/llama-adapter.cpp, src/llama-vocab.cpp).
//
// Orientation. ggml multiplies a weight of ne {in, out} (row-major [out, in],
// a row per output feature) with activations of ne {in, n}. GPT-2's Conv1D
// stores [in, out], so its weights are transposed on export; the embeddings
// ([vocab, n_embd], [n_ctx, n_embd]) keep their bytes. A LoRA pair is applied
// as y += scale · B·(A·x) with lora_a ne {in, r} and lora_b ne {r, out}: that
// is PEFT's lora_A [r, in] and lora_B [out, r] byte for byte, with no
// transpose (transposing them, as the base converter's Conv1D rule would, is
// wrong for GPT-2). The fused c_attn needs nothing special: llama.cpp splits
// attn_qkv's output rows into Q, K, V in the order HF's c_attn uses, so the
// fused B [3·n_embd, r] applies as is.

/// The tensor type of an export: F32, or F16 for the matrices (LayerNorm
/// weights and biases stay F32, as llama.cpp's converter keeps them).
public enum GGUFDType: String, CaseIterable, Sendable {
    case f32, f16

    var ggml: GGMLType { self == .f32 ? .f32 : .f16 }
    /// general.file_type: LLAMA_FTYPE_ALL_F32 = 0, MOSTLY_F16 = 1.
    var fileType: UInt32 { self == .f32 ? 0 : 1 }
}

enum GGUFExport {
    static let architecture = "gpt2"

    /// llama.cpp's tensor name of a LoRA target's weight in block `layer`.
    static func tensorName(layer: Int, _ target: LoRATarget) -> String {
        switch target {
        case .attnCAttn: return "blk.\(layer).attn_qkv.weight"
        case .attnCProj: return "blk.\(layer).attn_output.weight"
        case .mlpCFC: return "blk.\(layer).ffn_up.weight"
        case .mlpCProj: return "blk.\(layer).ffn_down.weight"
        }
    }

    /// What llama.cpp's GPT-2 graph computes: GELU (tanh form), attention
    /// scaled by 1/√head_dim. Other configs would load and give other numbers.
    static func checkExpressible(_ c: GPT2Config) throws {
        guard c.activation.kernel == LB_ACT_GELU_TANH else {
            throw LoRAError.unsupported(
                "GGUF export: activation_function \(c.activation.rawValue); llama.cpp's gpt2 graph uses GELU in its tanh form (gelu_new)")
        }
        guard c.scaleAttnWeights, !c.scaleAttnByInverseLayerIdx else {
            throw LoRAError.unsupported(
                "GGUF export: llama.cpp's gpt2 graph scales attention by 1/√head_dim only (scale_attn_weights true, scale_attn_by_inverse_layer_idx false)"
            )
        }
    }

    /// Conv1D weight [in, out] → [out, in] row-major (ne {in, out}).
    static func transposed(_ w: UnsafeBufferPointer<Float>, rows: Int, cols: Int) -> [Float] {
        var out = [Float](repeating: 0, count: rows * cols)
        for i in 0..<rows {
            for j in 0..<cols { out[j * rows + i] = w[i * cols + j] }
        }
        return out
    }

    // llama.cpp's token types (gguf-py TokenType).
    static let tokenNormal: Int32 = 1
    static let tokenControl: Int32 = 3
    static let tokenUserDefined: Int32 = 4
    static let tokenUnused: Int32 = 5

    /// tokenizer.ggml.* for GPT-2's byte-level BPE: one token string per id of
    /// the model's vocabulary (ids the tokenizer lacks become unused "[PAD<id>]"
    /// tokens, as llama.cpp's converter names them), the merges by rank, and
    /// the pre-tokenizer "gpt-2". Without a tokenizer, model "none" and the
    /// vocabulary size: llama.cpp then runs on token ids.
    static func addTokenizer(_ t: Tokenizer?, config c: GPT2Config, to file: inout GGUFFile) throws {
        guard let t else {
            try file.set("tokenizer.ggml.model", .string("none"))
            return
        }
        var tokens: [String] = []
        var types: [Int32] = []
        tokens.reserveCapacity(c.vocabSize)
        types.reserveCapacity(c.vocabSize)
        var seen = Set<String>()
        for id in 0..<c.vocabSize {
            var s: String
            var type = tokenNormal
            if let string = t.token(for: TokenID(id)) {
                s = string
                if let added = t.addedTokens[TokenID(id)] { type = added ? tokenControl : tokenUserDefined }
            } else {
                s = "[PAD\(id)]"
                type = tokenUnused
                while seen.contains(s) || t.id(for: s) != nil { s = "[" + s + "]" }
            }
            guard seen.insert(s).inserted else {
                throw LoRAError.unsupported(
                    "GGUF export: two token ids have the string \(TokenizerFiles.quoted(s)); llama.cpp refuses duplicate tokens")
            }
            tokens.append(s)
            types.append(type)
        }
        let merges = t.merges.table.sorted { $0.value.rank < $1.value.rank }.map { key, _ -> String in
            let left = Int(Int32(bitPattern: UInt32(truncatingIfNeeded: key >> 32)))
            let right = Int(Int32(bitPattern: UInt32(truncatingIfNeeded: key)))
            return (t.token(for: TokenID(left)) ?? "") + " " + (t.token(for: TokenID(right)) ?? "")
        }
        try file.set("tokenizer.ggml.model", .string("gpt2"))
        try file.set("tokenizer.ggml.pre", .string("gpt-2"))
        try file.set("tokenizer.ggml.tokens", .stringArray(tokens))
        try file.set("tokenizer.ggml.token_type", .int32Array(types))
        try file.set("tokenizer.ggml.merges", .stringArray(merges))
        if let b = c.bosTokenID, b >= 0, b < c.vocabSize { try file.set("tokenizer.ggml.bos_token_id", .uint32(UInt32(b))) }
        if let e = c.eosTokenID, e >= 0, e < c.vocabSize { try file.set("tokenizer.ggml.eos_token_id", .uint32(UInt32(e))) }
    }

    /// The metadata every GGUF from liblora starts with.
    static func general(type: String, name: String) throws -> GGUFFile {
        var f = GGUFFile()
        try f.set("general.architecture", .string(architecture))
        try f.set("general.type", .string(type))
        try f.set("general.name", .string(name))
        return f
    }
}

extension Model {
    /// Writes the model as a GGUF file llama.cpp loads (architecture gpt2):
    /// the weights as they are now, in any storage type (merged adapters included; attached,
    /// unmerged ones are not: export those with `Adapter.exportGGUF`), the
    /// hyperparameters and the tokenizer. Matrices and embeddings in `dtype`,
    /// LayerNorm weights and all biases F32. Written atomically.
    public func exportGGUF(path: String, dtype: GGUFDType = .f32) throws {
        try GGUFExport.checkExpressible(config)
        for i in 0..<weights.block.count where !weights.block.base[i].isFinite {
            throw LoRAError.numerical("the model holds NaN or infinite weights; not exported")
        }
        let c = config
        let name = directory.map { URL(fileURLWithPath: $0).lastPathComponent } ?? "gpt2"
        var f = try GGUFExport.general(type: "model", name: name)
        try f.set("general.file_type", .uint32(dtype.fileType))
        for (key, value) in [
            ("context_length", c.nPositions), ("embedding_length", c.nEmbd), ("feed_forward_length", c.innerSize),
            ("block_count", c.nLayer), ("attention.head_count", c.nHead), ("vocab_size", c.vocabSize),
        ] {
            guard let v = UInt32(exactly: value) else { throw LoRAError.invalidArgument("GGUF export: \(key) \(value) does not fit a u32") }
            try f.set("gpt2." + key, .uint32(v))
        }
        try f.set("gpt2.attention.layer_norm_epsilon", .float32(Float(c.layerNormEpsilon)))
        try GGUFExport.addTokenizer(tokenizer, config: c, to: &f)

        let w = weights
        // The model is read while the file is written: the closures keep it alive.
        // Matrices in any storage type (F32, BF16, F16, Q8_0) as their exact F32 values.
        func matrix(_ gguf: String, _ m: BaseMatrix, transpose: Bool) throws {
            let type = dtype.ggml
            try f.addTensor(name: gguf, type: type, ne: transpose ? [m.rows, m.cols] : [m.cols, m.rows]) {
                let values = m.dequantized()
                let t = transpose ? values.withUnsafeBufferPointer { GGUFExport.transposed($0, rows: m.rows, cols: m.cols) } : values
                return try t.withUnsafeBufferPointer { try GGUFFile.encode($0, as: type, name: gguf) }
            }
        }
        func vector(_ gguf: String, _ p: FloatPtr, _ n: Int) throws {
            try f.addTensor(name: gguf, type: .f32, ne: [n]) {
                try GGUFFile.encode(UnsafeBufferPointer(start: p, count: n), as: .f32, name: gguf)
            }
        }
        let e = c.nEmbd
        let ff = c.innerSize
        try matrix("token_embd.weight", w.wte, transpose: false)
        try matrix("position_embd.weight", w.wpe, transpose: false)
        for (l, L) in w.layers.enumerated() {
            let b = "blk.\(l)."
            try vector(b + "attn_norm.weight", L.ln1W, e)
            try vector(b + "attn_norm.bias", L.ln1B, e)
            try matrix(b + "attn_qkv.weight", L.attnW, transpose: true)
            try vector(b + "attn_qkv.bias", L.attnB, 3 * e)
            try matrix(b + "attn_output.weight", L.attnProjW, transpose: true)
            try vector(b + "attn_output.bias", L.attnProjB, e)
            try vector(b + "ffn_norm.weight", L.ln2W, e)
            try vector(b + "ffn_norm.bias", L.ln2B, e)
            try matrix(b + "ffn_up.weight", L.fcW, transpose: true)
            try vector(b + "ffn_up.bias", L.fcB, ff)
            try matrix(b + "ffn_down.weight", L.mlpProjW, transpose: true)
            try vector(b + "ffn_down.bias", L.mlpProjB, e)
        }
        try vector("output_norm.weight", w.lnfW, e)
        try vector("output_norm.bias", w.lnfB, e)
        // Tied: llama.cpp uses token_embd for the output when `output` is absent.
        if !c.tieWordEmbeddings { try matrix("output.weight", w.lmHead, transpose: false) }
        try withExtendedLifetime(w) { try f.write(to: path) }
    }
}

extension Adapter {
    /// Writes the adapter as a GGUF LoRA for llama.cpp (general.type adapter,
    /// adapter.type lora) for a GPT-2 of shape `base`, which must be the model
    /// the adapter was made for (the shapes are checked here and by llama.cpp).
    ///
    /// Scaling: llama.cpp applies `alpha / rank` per tensor pair, with one
    /// `adapter.lora.alpha` for the file and the rank read from lora_b. That
    /// holds plain LoRA (alpha), rsLoRA (alpha/√r, written as alpha·√r) and
    /// rank_pattern; a module whose scaling differs (alpha_pattern, or rsLoRA
    /// with several ranks) gets its B multiplied by its scaling divided by the
    /// file's alpha/r, so that every module applies exactly s·B·A.
    public func exportGGUF(path: String, base: GPT2Config, dtype: GGUFDType = .f32) throws {
        try checkFits(base)
        try GGUFExport.checkExpressible(base)
        // What a GGUF LoRA (lora_a, lora_b and one alpha) cannot carry.
        if config.useDoRA {
            throw LoRAError.unsupported(
                "adapter \(name) uses DoRA: a GGUF LoRA has no magnitude vector; merge it into the model and export that")
        }
        if config.loraBias {
            throw LoRAError.unsupported(
                "adapter \(name) has lora_bias: a GGUF LoRA has no bias term; merge it into the model and export that")
        }
        if !savedModules.isEmpty {
            throw LoRAError.unsupported(
                "adapter \(name) has modules_to_save: a GGUF LoRA carries no full modules; merge it into the model and export that")
        }
        if embedding != nil {
            throw LoRAError.unsupported("adapter \(name) adapts wte: not exported to GGUF (yet)")
        }
        for i in 0..<params.count where !params.base[i].isFinite {
            throw LoRAError.numerical("adapter \(name) holds NaN or infinite weights; not exported")
        }
        // The file's alpha: the config's own (r, lora_alpha) scaling times r.
        let r0 = Double(config.r)
        let alpha = Float(config.useRSLoRA ? config.loraAlpha * r0.squareRoot() : config.loraAlpha)
        /// What llama.cpp will apply to a pair of rank r: alpha ? alpha / r : 1 (llama_adapter_lora_weight::get_scale).
        func applied(_ r: Int) -> Double { alpha != 0 ? Double(alpha) / Double(r) : 1 }
        var f = try GGUFExport.general(type: "adapter", name: name)
        try f.set("adapter.type", .string("lora"))
        try f.set("adapter.lora.alpha", .float32(alpha))
        let type = dtype.ggml
        for s in slots {
            let gguf = GGUFExport.tensorName(layer: s.layer, s.target)
            let scaling = config.useRSLoRA ? s.alpha / Double(s.r).squareRoot() : s.alpha / Double(s.r)
            // 1 up to Float rounding of the file's alpha: B is written unchanged.
            let ratio = scaling / applied(s.r)
            let factor: Float? = abs(ratio - 1) <= 1e-6 ? nil : Float(ratio)
            let a = A(s)
            let b = B(s)
            try f.addTensor(name: gguf + ".lora_a", type: type, ne: [s.inFeatures, s.r]) {
                try GGUFFile.encode(UnsafeBufferPointer(start: a, count: s.countA), as: type, name: gguf + ".lora_a")
            }
            try f.addTensor(name: gguf + ".lora_b", type: type, ne: [s.r, s.outFeatures]) {
                guard let factor else {
                    return try GGUFFile.encode(UnsafeBufferPointer(start: b, count: s.countB), as: type, name: gguf + ".lora_b")
                }
                let scaled = (0..<s.countB).map { b[$0] * factor }
                return try scaled.withUnsafeBufferPointer { try GGUFFile.encode($0, as: type, name: gguf + ".lora_b") }
            }
        }
        try withExtendedLifetime(self) { try f.write(to: path) }
    }
}

extension Adapter {
    /// Loads a PEFT adapter directory and writes it as a GGUF LoRA (see
    /// `exportGGUF(path:base:dtype:)`). What a GGUF LoRA cannot express is
    /// refused by name before anything is loaded: llama.cpp adds scale·B·A to
    /// a weight and nothing else, so DoRA's magnitude, modules_to_save's full
    /// copies, LoRA biases and embedding targets have no place in the file.
    public static func exportGGUF(directory: String, base: GPT2Config, path: String, dtype: GGUFDType = .f32) throws {
        let cfgPath = directory + "/" + configFile
        guard let data = FileManager.default.contents(atPath: cfgPath) else {
            throw LoRAError.io(path: cfgPath, reason: "cannot read file")
        }
        if let o = (try? JSON.parse(Array(data)))?.objectValue {
            func isSet(_ key: String) -> Bool {
                guard let v = o[key], !v.isNull else { return false }
                return v != .bool(false) && v != .array([]) && v != .string("none")
            }
            let refusals = [
                ("use_dora", "DoRA (use_dora): llama.cpp applies scale·B·A only, not DoRA's magnitude"),
                ("modules_to_save", "modules_to_save: a GGUF LoRA holds only lora_a/lora_b pairs, not full module copies"),
                ("lora_bias", "lora_bias: a GGUF LoRA has no bias term"),
                ("trainable_token_indices", "trainable_token_indices: a GGUF LoRA has no token-embedding rows"),
            ]
            for (key, why) in refusals where isSet(key) {
                throw LoRAError.unsupported(
                    "\(cfgPath): GGUF LoRA cannot express \(why); merge the adapter into the model (lora merge) and export the merged model instead"
                )
            }
        }
        let adapter = try load(directory: directory, modelConfig: base, name: URL(fileURLWithPath: directory).lastPathComponent)
        try adapter.exportGGUF(path: path, base: base, dtype: dtype)
    }
}
