" Vim syntax file
" Language:    ftdsl pipeline (.ftp)
" Maintainer:  ftdsl
" Install:     copy editors/vim/{syntax,ftdetect} into ~/.vim (or ~/.config/nvim), see docs/editors.md

if exists("b:current_syntax")
  finish
endif

syn match   ftpBlockKind   "^\s*\zs\<\%(pipeline\|data\|model\|train\|distill\|prune\|quantize\|export\|evaluate\|sweep\)\>\ze\s\+\h\w*\s*{" nextgroup=ftpBlockName skipwhite
syn match   ftpItem        "^\s*\zsparam\>" nextgroup=ftpParamName skipwhite
syn match   ftpItem        "^\s*\zs\%(use\|ftp\)\>\ze\s*[\"0-9]"
syn keyword ftpConstant    true false null
syn match   ftpBlockName   "\<[A-Za-z_][A-Za-z0-9_]*\>" contained
syn match   ftpParamName   "\<[A-Za-z_][A-Za-z0-9_]*\>" contained
syn match   ftpAttribute   "\<[A-Za-z_][A-Za-z0-9_]*\>\ze\s*="
syn match   ftpCall        "\<[A-Za-z_][A-Za-z0-9_]*\>\ze\s*("
syn match   ftpNumber      "\%([A-Za-z0-9_.]\)\@<![+-]\=\%(\d[0-9_]*\%(\.\d[0-9_]*\)\=\|\.\d[0-9_]*\)\%([eE][+-]\=\d\+\)\=\>"
syn match   ftpEscape      "\\." contained
syn region  ftpString      start=+"+ skip=+\\.+ end=+"+ end=+$+ contains=ftpEscape oneline
syn match   ftpComment     "#.*$" contains=@Spell

hi def link ftpBlockKind   Keyword
hi def link ftpItem        Include
hi def link ftpConstant    Constant
hi def link ftpBlockName   Type
hi def link ftpParamName   Identifier
hi def link ftpAttribute   Identifier
hi def link ftpCall        Function
hi def link ftpNumber      Number
hi def link ftpString      String
hi def link ftpEscape      SpecialChar
hi def link ftpComment     Comment

let b:current_syntax = "ftp"
