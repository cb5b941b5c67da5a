"""The hook machinery: architecture spec types, module targeting, class swapping, the attention
function wrapper and the composition engine. It names no adapter method."""
