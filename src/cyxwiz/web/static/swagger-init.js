// Starts Swagger UI on /docs (served from the swagger-ui-bundle-v2 package, no CDN); a
// separate file so the page needs no inline script under the Content-Security-Policy.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    layout: "BaseLayout",
    presets: [SwaggerUIBundle.presets.apis],
    showExtensions: true,
    persistAuthorization: false,
  });
});
