//! `#[documented]`: a `#[pg_extern]` function's doc comment becomes its SQL `COMMENT`, so the
//! text a `\df+` or a PostgREST OpenAPI reader sees is written once, beside the code.
//!
//! Put it above `#[pg_extern]`. The first paragraph of the doc comment is the COMMENT (its
//! lines joined, Markdown backticks dropped); later paragraphs are for the code's readers only.
//! The macro adds an `extension_sql!` block that requires the function, so the install script
//! comments it right after creating it. The function is found by its C symbol
//! (`<fn>_wrapper` in flowgate's library), which is unique even when SQL names are overloaded;
//! a function that cannot be found fails CREATE EXTENSION instead of going undocumented.

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, Expr, ExprLit, ItemFn, Lit, LitStr, Meta};

/// The first paragraph of the item's doc comment, one line.
fn summary(func: &ItemFn) -> String {
    let mut lines = Vec::new();
    for attr in &func.attrs {
        let Meta::NameValue(nv) = &attr.meta else {
            continue;
        };
        if !nv.path.is_ident("doc") {
            continue;
        }
        if let Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) = &nv.value
        {
            lines.push(s.value());
        }
    }
    let mut out = Vec::new();
    for line in lines.iter().map(|l| l.trim()) {
        if line.is_empty() {
            if out.is_empty() {
                continue;
            }
            break;
        }
        out.push(line.replace('`', ""));
    }
    out.join(" ")
}

#[proc_macro_attribute]
pub fn documented(args: TokenStream, item: TokenStream) -> TokenStream {
    if !args.is_empty() {
        let e = syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[documented] takes no arguments",
        );
        return e.to_compile_error().into();
    }
    let original = proc_macro2::TokenStream::from(item.clone());
    let func = parse_macro_input!(item as ItemFn);
    let ident = &func.sig.ident;
    let text = summary(&func);
    if text.is_empty() {
        let e = syn::Error::new_spanned(
            ident,
            "#[documented] needs a doc comment: its first paragraph is the SQL COMMENT",
        );
        return e.to_compile_error().into();
    }
    if text.contains("$doc$") || text.contains("$comment$") {
        let e = syn::Error::new_spanned(ident, "a doc comment may not contain $doc$ or $comment$");
        return e.to_compile_error().into();
    }
    let sql = format!(
        "DO $comment$\n\
         DECLARE\n    f pg_catalog.regprocedure;\n\
         BEGIN\n    \
             SELECT p.oid INTO STRICT f FROM pg_catalog.pg_proc p\n     \
              WHERE p.prosrc = '{ident}_wrapper' AND p.probin = 'MODULE_PATHNAME';\n    \
             EXECUTE pg_catalog.format('COMMENT ON FUNCTION %s IS %L', f, $doc${text}$doc$);\n\
         END\n$comment$;"
    );
    let sql = LitStr::new(&sql, ident.span());
    let name = LitStr::new(&format!("comment_{ident}"), ident.span());
    quote! {
        #original
        ::pgrx::extension_sql!(#sql, name = #name, requires = [#ident]);
    }
    .into()
}
